// The `twill` command-line tool (ts/bin/twill.mjs) against the Worker in workerd on
// miniflare's R2, over loopback: a 64 MiB file made by C SQLite (Python's sqlite3) goes up
// in parts, is queried, comes back out and is checked by C SQLite; then fork, restore,
// history, ls, info and rm, with their errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { startEngine, tempDir, removeDir, post } from "./harness.mjs";

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const cli = path.resolve(here, "../bin/twill.mjs");
const fixture = path.resolve(here, "fixtures/sqlite_file.py");

let engine, persist, dir;

before(async () => {
  persist = tempDir();
  dir = tempDir("twill-cli-");
  engine = await startEngine({ persistDir: persist });
});

after(async () => {
  await engine?.stop();
  removeDir(persist);
  removeDir(dir);
});

/** Runs twill; resolves { stdout, stderr } on exit code 0. */
const twill = (...args) => run("node", [cli, ...args, "--url", engine.url], { maxBuffer: 16 << 20 });

/** Runs twill expecting it to fail; resolves its stderr. */
async function twillFails(...args) {
  try {
    await twill(...args);
  } catch (e) {
    assert.equal(e.code, 1, `exit code: ${e.stderr}`);
    return e.stderr;
  }
  assert.fail(`twill ${args.join(" ")} succeeded`);
}

async function python(...args) {
  const { stdout } = await run("python3", [fixture, ...args], { maxBuffer: 16 << 20 });
  return JSON.parse(stdout);
}

async function q(db, sql) {
  const r = await post(`${engine.url}/v1/db/${db}/query`, { sql });
  assert.equal(r.status, 200, `${sql}: ${JSON.stringify(r.body)}`);
  return r.body;
}

test("twill import (64 MiB from C SQLite, in parts) → queries → twill export → the same rows and schema in C SQLite", async () => {
  const file = path.join(dir, "source.db");
  const made = await python("make", file, "64");
  assert.equal(made.integrity, "ok");
  const bytes = statSync(file).size;
  assert.ok(bytes >= 64 << 20, `${bytes} bytes`);

  const imported = await twill("import", "big", file, "--part-mib", "16", "--json");
  const answer = JSON.parse(imported.stdout);
  assert.equal(answer.bytes, bytes);
  assert.match(imported.stderr, /import .*100%/, imported.stderr);

  // Queried as it is: tables, the view, 64-bit integers, AUTOINCREMENT's counter, blobs.
  assert.deepEqual((await q("big", "SELECT count(*) FROM posts")).rows[0], [made.tables.posts.rows]);
  assert.deepEqual((await q("big", "SELECT count(*) FROM user_posts")).rows[0], [made.tables.Users.rows]);
  const extremes = await q("big", 'SELECT count(*) FROM "Users" WHERE balance IN (9223372036854775807, -9223372036854775808)');
  assert.ok(extremes.rows[0][0] > 0);
  assert.deepEqual((await q("big", "SELECT seq FROM sqlite_sequence")).rows[0], [2000]);
  const blobs = await q("big", "SELECT min(length(attachment)) >= 2000, count(*) FROM posts WHERE attachment IS NOT NULL");
  assert.deepEqual(blobs.rows[0], [1, made.tables.posts.rows]);
  if (made.fts5) {
    // The FTS5 table's own storage is ordinary tables, readable as such.
    assert.deepEqual((await q("big", "SELECT count(*) FROM post_search_content")).rows[0], [made.tables.posts.rows]);
  }

  const out = path.join(dir, "exported.db");
  const exported = await twill("export", "big", out);
  assert.match(exported.stdout, /exported\.db: 6\d\.\d MiB of commit tw/, exported.stdout);
  assert.equal(statSync(out).size, bytes);
  const back = await python("digest", out);
  assert.equal(back.integrity, "ok");
  assert.deepEqual(back.tables, made.tables);
  assert.deepEqual(back.schema, made.schema);

  // A trigger made by C SQLite still fires here.
  await q("big", "INSERT INTO posts (id, author, title) VALUES (1000000, 1, 'new')");
  assert.deepEqual((await q("big", "SELECT what FROM audit ORDER BY id DESC LIMIT 1")).rows[0], ["post 1000000"]);
});

test("twill fork, restore, history, ls, info, rm (restorable, then purged), SQL dumps, --help and errors", async () => {
  const first = await q("app", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)");
  await q("app", "INSERT INTO t (v) VALUES ('one'), ('two')");
  const before = (await q("app", "SELECT 1")).meta.bookmark;
  await q("app", "DELETE FROM t");

  const history = await twill("history", "app", "--at", String(Date.now() + 60_000));
  assert.match(history.stdout, /^history from tw[0-9a-f]{16} .* to tw[0-9a-f]{16}/m, history.stdout);
  const restored = await twill("restore", "app", "--bookmark", before);
  assert.match(restored.stdout, /app: restored tw[0-9a-f]{16} as commit tw[0-9a-f]{16}; undo: twill restore app --bookmark tw/);
  assert.deepEqual((await q("app", "SELECT count(*) FROM t")).rows[0], [2]);

  const forked = await twill("fork", "app", "app-copy", "--bookmark", first.meta.bookmark);
  assert.match(forked.stdout, /^app-copy: forked from app at tw/);
  assert.deepEqual((await q("app-copy", "SELECT count(*) FROM t")).rows[0], [0]);
  const info = JSON.parse((await twill("info", "app-copy", "--json")).stdout);
  assert.deepEqual(info.forked_from, { database: "app", bookmark: first.meta.bookmark });
  assert.match((await twill("info", "app")).stdout, /^app: \d+(\.\d)? KiB \(\d+ pages of 4096 bytes\)\nnewest commit  tw/);

  // SQL dumps out and in.
  const dump = path.join(dir, "app.sql");
  await twill("export", "app", dump);
  await twill("import", "app-from-dump", dump);
  assert.deepEqual((await q("app-from-dump", "SELECT v FROM t ORDER BY id")).rows, [["one"], ["two"]]);

  // rm keeps the history: ls leaves the database out, restore brings it back.
  const removed = await twill("rm", "app-copy");
  const undo = removed.stdout.match(/undo: twill restore app-copy --bookmark (tw[0-9a-f]{16})/);
  assert.ok(undo, removed.stdout);
  const names = (out) => out.split("\n").slice(1).map((line) => line.split("\t")[0]);
  assert.ok(!names((await twill("ls")).stdout).includes("app-copy"));
  const withDeleted = (await twill("ls", "--deleted")).stdout;
  assert.match(withDeleted, /^app-copy\t.*\tdeleted /m, withDeleted);
  await twill("restore", "app-copy", "--bookmark", undo[1]);
  assert.ok(names((await twill("ls", "--limit", "1")).stdout).includes("app-copy"), "paged one at a time");

  // A purge needs --yes, and then takes the history.
  assert.match(await twillFails("rm", "app-copy", "--purge"), /add --yes/);
  assert.match((await twill("rm", "app-copy", "--purge", "--yes")).stdout, /^app-copy: deleted and purged \(\d+ objects\)/);
  assert.match(await twillFails("restore", "app-copy", "--bookmark", undo[1]), /HISTORY_UNAVAILABLE/);

  // Help for every command; errors with the server's code.
  for (const command of ["ls", "info", "history", "export", "import", "fork", "restore", "rm"]) {
    assert.match((await run("node", [cli, command, "--help"])).stdout, new RegExp(`^twill ${command} `));
  }
  assert.match((await run("node", [cli, "--help"])).stdout, /Commands:/);
  const junk = path.join(dir, "junk.db");
  writeFileSync(junk, "not a database at all".repeat(100));
  assert.match(await twillFails("import", "junk", junk), /^twill: INVALID_DATABASE_FILE: /m);
  assert.match(await twillFails("import", "app", dump), /DATABASE_NOT_EMPTY/);
  // Valid files turso cannot keep are refused saying what to do, and the advice works.
  const autoVacuum = path.join(dir, "auto-vacuum.db");
  await python("script", autoVacuum, "PRAGMA auto_vacuum = FULL; CREATE TABLE t (x); INSERT INTO t VALUES ('kept');");
  assert.match(await twillFails("import", "av", autoVacuum), /INVALID_DATABASE_FILE: the file uses auto_vacuum = FULL.*PRAGMA auto_vacuum = NONE; VACUUM;/);
  assert.equal((await python("script", autoVacuum, "PRAGMA auto_vacuum = NONE; VACUUM;")).integrity, "ok");
  await twill("import", "av", autoVacuum);
  assert.deepEqual((await q("av", "SELECT x FROM t")).rows, [["kept"]]);
  const utf16 = path.join(dir, "utf16.db");
  await python("script", utf16, "PRAGMA encoding = 'UTF-16le'; CREATE TABLE t (x);");
  assert.match(await twillFails("import", "u16", utf16), /INVALID_DATABASE_FILE: the file stores its text as UTF-16 \(little-endian\)/);
  assert.match(await twillFails("info", "never-made"), /DATABASE_NOT_FOUND/);
  assert.match(await twillFails("restore", "app"), /name the commit/);
  assert.match(await twillFails("frobnicate"), /no command "frobnicate"/);
  const noUrl = await run("node", [cli, "ls"], { env: { ...process.env, TWILL_URL: "" } }).catch((e) => e);
  assert.match(noUrl.stderr, /give the Worker's URL/);
});
