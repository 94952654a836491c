// History in workerd: the commit at a time, reading the past (as_of) from another isolate,
// restoring in place and undoing it, across checkpoints, on miniflare's R2.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Miniflare } from "miniflare";
import { engineWorker, tempDir, removeDir } from "./harness.mjs";

let mf, persist;

before(async () => {
  persist = tempDir();
  const extra = { bindings: { TWILL_CHECKPOINT_RECORDS: "3" } };
  mf = new Miniflare({ r2Persist: persist, workers: [engineWorker("a", extra), engineWorker("b", extra)] });
  await mf.ready;
});

after(async () => {
  await mf?.dispose();
  removeDir(persist);
});

async function call(isolate, path, { body, headers = {}, method = body === undefined ? "GET" : "POST" } = {}) {
  const worker = await mf.getWorker(isolate);
  const res = await worker.fetch(`http://localhost${path}`, {
    method,
    headers: { "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json(), headers: res.headers };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("as_of reads, /history and restore: every commit in the window, from either isolate", async () => {
  const db = "/v1/db/hist";
  assert.equal((await call("a", `${db}/query`, { body: { sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)" } })).status, 200);
  const commits = [];
  for (let i = 1; i <= 10; i++) {
    await sleep(5);
    const r = await call(i % 2 ? "a" : "b", `${db}/query`, { body: { sql: "INSERT INTO t (v) VALUES (?)", params: [`v${i}`] } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    commits.push({ bookmark: r.body.meta.bookmark, at: Date.now(), rows: i });
    await sleep(5);
  }
  const dropped = await call("a", `${db}/query`, { body: { sql: "DROP TABLE t" } });
  assert.equal(dropped.status, 200);

  // Every past state, by bookmark in the body and by time in the header, from both isolates.
  for (const [i, c] of commits.entries()) {
    const isolate = i % 2 ? "a" : "b";
    const byBookmark = await call(isolate, `${db}/query`, { body: { sql: "SELECT count(*) AS n FROM t", as_of: c.bookmark } });
    assert.equal(byBookmark.status, 200, JSON.stringify(byBookmark.body));
    assert.equal(byBookmark.body.rows[0][0], c.rows, `rows after ${c.bookmark}`);
    const iso = new Date(c.at).toISOString();
    const byTime = await call(isolate, `${db}/batch`, {
      body: { statements: [{ sql: "SELECT count(*) FROM t" }, { sql: "SELECT max(v) FROM t WHERE id = ?", params: [c.rows] }] },
      headers: { "x-twill-as-of": iso },
    });
    assert.equal(byTime.status, 200, JSON.stringify(byTime.body));
    assert.equal(byTime.body.results[0].rows[0][0], c.rows, `rows at ${iso}`);
    assert.equal(byTime.body.results[1].rows[0][0], `v${c.rows}`);
    const found = await call(isolate, `${db}/history?at=${encodeURIComponent(iso)}`);
    assert.equal(found.status, 200, JSON.stringify(found.body));
    assert.equal(found.body.bookmark, c.bookmark, `the commit at ${iso}`);
    assert.equal((await call(isolate, `${db}/history?at=${c.at}`)).body.bookmark, c.bookmark, "ms work too");
  }
  const window = (await call("b", `${db}/history`)).body.window;
  assert.equal(window.head, dropped.body.meta.bookmark);
  assert.ok(window.from <= commits[0].bookmark, "the window reaches back to the first commit");

  // The past is read-only and reading it changed nothing.
  const write = await call("b", `${db}/query`, { body: { sql: "INSERT INTO t (v) VALUES ('x')", as_of: commits[3].bookmark } });
  assert.equal(write.status, 400);
  assert.equal(write.body.error.code, "STATEMENT_NOT_ALLOWED");
  const now = await call("b", `${db}/query`, { body: { sql: "SELECT count(*) FROM t" } });
  assert.equal(now.status, 400);
  assert.match(now.body.error.message, /no such table/);

  // Restore the state after the 7th row from isolate b; isolate a sees it.
  const restored = await call("b", `${db}/restore`, { body: { bookmark: commits[6].bookmark } });
  assert.equal(restored.status, 200, JSON.stringify(restored.body));
  assert.equal(restored.body.previous, dropped.body.meta.bookmark);
  assert.equal(restored.body.restored, commits[6].bookmark);
  assert.ok(restored.body.bookmark > restored.body.previous, "bookmarks sort in commit order");
  assert.equal(restored.headers.get("x-twill-bookmark"), restored.body.bookmark);
  const seen = await call("a", `${db}/query`, { body: { sql: "SELECT count(*) FROM t" } });
  assert.equal(seen.body.rows[0][0], 7);
  for (let i = 0; i < 4; i++) {
    assert.equal((await call("a", `${db}/query`, { body: { sql: "INSERT INTO t (v) VALUES ('after')" } })).status, 200);
  }
  // Undo: back to the dropped table, by time this time.
  const undo = await call("a", `${db}/restore`, { body: { bookmark: restored.body.previous } });
  assert.equal(undo.status, 200, JSON.stringify(undo.body));
  assert.match((await call("b", `${db}/query`, { body: { sql: "SELECT 1 FROM t" } })).body.error.message, /no such table/);
  const redo = await call("b", `${db}/restore`, { body: { time: new Date(commits[9].at).toISOString() } });
  assert.equal(redo.status, 200, JSON.stringify(redo.body));
  assert.equal(redo.body.restored, commits[9].bookmark);
  assert.equal((await call("a", `${db}/query`, { body: { sql: "SELECT count(*) FROM t" } })).body.rows[0][0], 10);
});

test("history errors are named: bad points, bookmarks ahead of the database, times before it", async () => {
  const db = "/v1/db/hist-errors";
  const created = await call("a", `${db}/query`, { body: { sql: "CREATE TABLE t (x)" } });
  assert.equal(created.status, 200);
  const cases = [
    [{ sql: "SELECT 1", as_of: "yesterday" }, 400, "INVALID_REQUEST"],
    [{ sql: "SELECT 1", as_of: "tw12" }, 400, "INVALID_BOOKMARK"],
    [{ sql: "SELECT 1", as_of: "tw00000000000fffff" }, 400, "INVALID_BOOKMARK"],
  ];
  for (const [body, status, code] of cases) {
    const r = await call("b", `${db}/query`, { body });
    assert.equal(r.status, status, `${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.error.code, code, JSON.stringify(body));
  }
  for (const body of [{}, { bookmark: "tw0000000000000001", time: 5 }, { time: "soon" }, { bookmark: 7 }]) {
    const r = await call("a", `${db}/restore`, { body });
    assert.equal(r.status, 400, `${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
  }
  // Before its first commit the database was empty.
  const early = await call("b", `${db}/query`, { body: { sql: "SELECT count(*) FROM t", as_of: "2001-01-01T00:00:00Z" } });
  assert.equal(early.status, 400);
  assert.match(early.body.error.message, /no such table/);
  assert.equal((await call("b", `${db}/history?at=978307200000`)).body.bookmark, "tw0000000000000000");
  const r = await call("a", `${db}/history?at=nonsense`);
  assert.equal(r.body.error.code, "INVALID_REQUEST");
  assert.equal((await call("a", `${db}/history`, { body: {} })).status, 405);
  // Nothing of that changed the database.
  assert.equal((await call("a", `${db}/query`, { body: { sql: "SELECT count(*) FROM t" } })).body.meta.bookmark, created.body.meta.bookmark);
});

test("forks: from now or any commit, in a few writes, independent both ways, forks of forks", async () => {
  const db = "/v1/db/fork-parent";
  await call("a", `${db}/query`, { body: { sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)" } });
  const marks = [];
  for (let i = 1; i <= 6; i++) {
    const r = await call("a", `${db}/query`, { body: { sql: "INSERT INTO t (v) VALUES (?)", params: [`p${i}`] } });
    marks.push(r.body.meta.bookmark);
  }
  const now = await call("b", `${db}/fork`, { body: { to: "fork-now" } });
  assert.equal(now.status, 200, JSON.stringify(now.body));
  assert.equal(now.body.from, marks[5]);
  assert.ok(now.body.meta.r2_writes <= 3, `a fork is a few writes: ${now.body.meta.r2_writes}`);
  const past = await call("a", `${db}/fork`, { body: { to: "fork-past", bookmark: marks[1] } });
  assert.equal(past.status, 200, JSON.stringify(past.body));
  const count = async (isolate, name) =>
    (await call(isolate, `/v1/db/${name}/query`, { body: { sql: "SELECT count(*) FROM t" } })).body.rows[0][0];
  assert.equal(await count("a", "fork-now"), 6);
  assert.equal(await count("b", "fork-past"), 2);
  await call("b", "/v1/db/fork-past/query", { body: { sql: "INSERT INTO t (v) VALUES ('child')" } });
  await call("a", `${db}/query`, { body: { sql: "DELETE FROM t WHERE id <= 3" } });
  assert.equal(await count("a", "fork-past"), 3);
  assert.equal(await count("b", "fork-parent"), 3);
  assert.equal(await count("a", "fork-now"), 6);
  const grand = await call("b", "/v1/db/fork-past/fork", { body: { to: "fork-grand" } });
  assert.equal(grand.status, 200, JSON.stringify(grand.body));
  assert.equal(await count("a", "fork-grand"), 3);
  // The fork's first commit is in its own history: restore it to before the child's write.
  const undo = await call("a", "/v1/db/fork-past/restore", { body: { bookmark: past.body.bookmark } });
  assert.equal(undo.status, 200, JSON.stringify(undo.body));
  assert.equal(await count("b", "fork-past"), 2);
  for (const [body, status, code] of [
    [{ to: "fork-now" }, 409, "DATABASE_EXISTS"],
    [{ to: "fork-parent" }, 409, "DATABASE_EXISTS"],
    [{ to: "bad name!" }, 400, "INVALID_DATABASE_NAME"],
    [{ to: "x", bookmark: "tw0000000000ffffff" }, 400, "INVALID_BOOKMARK"],
    [{}, 400, "INVALID_REQUEST"],
  ]) {
    const r = await call("a", `${db}/fork`, { body });
    assert.equal(r.status, status, `${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.error.code, code, JSON.stringify(body));
  }
});

test("export: the SQLite file of the newest or any past commit, with its length, valid for SQLite", async () => {
  const { createClient } = await import("@libsql/client");
  const { writeFileSync } = await import("node:fs");
  const path = await import("node:path");
  const db = "/v1/db/export-me";
  await call("a", `${db}/batch`, {
    body: {
      statements: [
        { sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER, pad BLOB)" },
        { sql: "CREATE INDEX t_v ON t (v)" },
        { sql: "CREATE VIEW big AS SELECT * FROM t WHERE v > 100" },
        { sql: "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) INSERT INTO t (v, pad) SELECT i, randomblob(3000) FROM n" },
      ],
    },
  });
  const before = (await call("b", `${db}/query`, { body: { sql: "DELETE FROM t WHERE v <= 150" } })).body.meta.bookmark;
  const dir = tempDir("twill-export-");
  const fetchFile = async (isolate, query) => {
    const worker = await mf.getWorker(isolate);
    const res = await worker.fetch(`http://localhost${db}/export${query}`);
    assert.equal(res.status, 200, res.status === 200 ? "" : await res.text());
    const bytes = new Uint8Array(await res.arrayBuffer());
    assert.equal(Number(res.headers.get("content-length")), bytes.length, "content-length is the file's length");
    assert.equal(res.headers.get("content-type"), "application/vnd.sqlite3");
    assert.equal(new TextDecoder().decode(bytes.slice(0, 15)), "SQLite format 3");
    return { bytes, bookmark: res.headers.get("x-twill-bookmark") };
  };
  const open = async (bytes, name) => {
    const file = path.join(dir, name);
    writeFileSync(file, bytes);
    const c = createClient({ url: `file:${file}` });
    assert.equal((await c.execute("PRAGMA integrity_check")).rows[0][0], "ok");
    return c;
  };
  try {
    const now = await fetchFile("a", "");
    const c = await open(now.bytes, "now.db");
    assert.equal((await c.execute("SELECT count(*) FROM t")).rows[0][0], 150);
    assert.equal((await c.execute("SELECT count(*) FROM big")).rows[0][0], 150);
    c.close();
    const old = await fetchFile("b", `?as_of=${before}`);
    assert.equal(old.bookmark, before);
    const past = await fetchFile("b", `?as_of=tw${(parseInt(before.slice(2), 16) - 1).toString(16).padStart(16, "0")}`);
    const p = await open(past.bytes, "past.db");
    assert.equal((await p.execute("SELECT count(*) FROM t")).rows[0][0], 300);
    assert.equal((await p.execute("SELECT sum(length(pad)) FROM t")).rows[0][0], 900000);
    p.close();
    // While nothing else changed, the export is stable: same bytes from the other isolate.
    const again = await fetchFile("b", "");
    assert.deepEqual(again.bytes, now.bytes);
    const bad = await call("a", `${db}/export?as_of=nonsense`);
    assert.equal(bad.status, 400);
  } finally {
    removeDir(dir);
  }
});

test("import: a SQLite file (plain or gzip) becomes the database at once; refused into data unless replace; bad files refused", async () => {
  const { createClient } = await import("@libsql/client");
  const { readFileSync } = await import("node:fs");
  const { gzipSync } = await import("node:zlib");
  const path = await import("node:path");
  const dir = tempDir("twill-import-");
  try {
    const file = path.join(dir, "source.db");
    const src = createClient({ url: `file:${file}` });
    await src.batch(
      [
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, bio TEXT)",
        "CREATE INDEX users_bio ON users (bio)",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) INSERT INTO users (name, bio) SELECT 'user' || i, hex(randomblob(100)) FROM n",
      ],
      "write",
    );
    src.close();
    const bytes = readFileSync(file);
    const put = async (isolate, name, body, { query = "", headers = {} } = {}) => {
      const worker = await mf.getWorker(isolate);
      const res = await worker.fetch(`http://localhost/v1/db/${name}/import${query}`, { method: "PUT", headers, body });
      return { status: res.status, body: await res.json() };
    };
    const count = async (isolate, name) =>
      (await call(isolate, `/v1/db/${name}/query`, { body: { sql: "SELECT count(*) FROM users" } })).body;

    const plain = await put("a", "imported", bytes, { headers: { "content-type": "application/vnd.sqlite3" } });
    assert.equal(plain.status, 200, JSON.stringify(plain.body));
    assert.equal(plain.body.bytes, bytes.length);
    assert.equal(plain.body.check, "quick_check");
    assert.equal((await count("b", "imported")).rows[0][0], 5000);
    const dup = await call("b", "/v1/db/imported/query", { body: { sql: "INSERT INTO users (name) VALUES ('user7')" } });
    assert.equal(dup.body.error.sqlite_code, "SQLITE_CONSTRAINT_UNIQUE", "constraints came along");

    const zipped = await put("b", "imported-gz", gzipSync(bytes), { headers: { "content-encoding": "gzip" } });
    assert.equal(zipped.status, 200, JSON.stringify(zipped.body));
    assert.equal((await count("a", "imported-gz")).rows[0][0], 5000);

    // Into data: refused, unless replace (then undoable by restoring `previous`).
    await call("a", "/v1/db/imported/query", { body: { sql: "DELETE FROM users WHERE id > 10" } });
    const refused = await put("a", "imported", bytes);
    assert.equal(refused.status, 409);
    assert.equal(refused.body.error.code, "DATABASE_NOT_EMPTY");
    assert.equal((await count("b", "imported")).rows[0][0], 10);
    const replaced = await put("b", "imported", bytes, { query: "?replace=true" });
    assert.equal(replaced.status, 200, JSON.stringify(replaced.body));
    assert.equal((await count("a", "imported")).rows[0][0], 5000);
    await call("a", "/v1/db/imported/restore", { body: { bookmark: replaced.body.previous } });
    assert.equal((await count("b", "imported")).rows[0][0], 10);

    // An export imports back as the same database.
    const worker = await mf.getWorker("a");
    const exported = new Uint8Array(await (await worker.fetch("http://localhost/v1/db/imported-gz/export")).arrayBuffer());
    assert.equal((await put("b", "round-trip", exported)).status, 200);
    assert.equal((await count("a", "round-trip")).rows[0][0], 5000);

    const damaged = Buffer.from(bytes);
    damaged.fill(0x5a, 8192, 8192 + 4096);
    for (const [what, body, status, code, headers] of [
      ["text", Buffer.from("CREATE TABLE t (x);".repeat(20)), 400, "INVALID_DATABASE_FILE", {}],
      ["damaged", damaged, 400, "INVALID_DATABASE_FILE", {}],
      ["truncated", bytes.subarray(0, bytes.length - 1000), 400, "INVALID_DATABASE_FILE", {}],
      ["html", Buffer.from("<p>CREATE TABLE t (x);</p>"), 415, "UNSUPPORTED_MEDIA_TYPE", { "content-type": "text/html" }],
      ["brotli", bytes, 415, "UNSUPPORTED_MEDIA_TYPE", { "content-encoding": "br" }],
    ]) {
      const r = await put("a", `bad-${what.replace(" ", "-")}`, body, { headers });
      assert.equal(r.status, status, `${what}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, code, what);
      const after = await call("b", `/v1/db/bad-${what.replace(" ", "-")}/query`, { body: { sql: "SELECT count(*) FROM sqlite_schema" } });
      assert.equal(after.body.rows[0][0], 0, `${what}: nothing of it is visible`);
    }
  } finally {
    removeDir(dir);
  }
});

test("SQL dumps: ?format=sql loads in SQLite as it is; a dump imports (plain or gzip) as one commit; a failing one commits nothing", async () => {
  const { createClient } = await import("@libsql/client");
  const { gzipSync } = await import("node:zlib");
  const path = await import("node:path");
  const db = "/v1/db/dump-me";
  await call("a", `${db}/batch`, {
    body: {
      statements: [
        { sql: "CREATE TABLE \"Users\" (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, score REAL, avatar BLOB)" },
        { sql: "CREATE TABLE audit (msg TEXT)" },
        { sql: "CREATE INDEX users_score ON \"Users\" (score)" },
        { sql: "CREATE VIEW top AS SELECT name FROM \"Users\" WHERE score > 0.5" },
        { sql: "CREATE TRIGGER users_in AFTER INSERT ON \"Users\" BEGIN INSERT INTO audit VALUES (new.name); END" },
        { sql: "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO \"Users\" (name, score, avatar) SELECT 'it''s user ' || i, i / 3000.0, randomblob(64) FROM n" },
        { sql: "INSERT INTO \"Users\" (id, name) VALUES (9000, 'gone')" },
        { sql: "DELETE FROM \"Users\" WHERE id = 9000" },
      ],
    },
  });
  const facts = "SELECT count(*), sum(score), sum(length(avatar)), (SELECT count(*) FROM audit), (SELECT count(*) FROM top) FROM \"Users\"";
  const ours = async (isolate, name) => (await call(isolate, `/v1/db/${name}/query`, { body: { sql: facts } })).body.rows[0];
  const want = await ours("b", "dump-me");
  assert.equal(want[0], 3000);

  const worker = await mf.getWorker("b");
  const res = await worker.fetch(`http://localhost${db}/export?format=sql`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /^application\/sql/);
  assert.match(res.headers.get("content-disposition"), /dump-me-tw[0-9a-f]+\.sql/);
  const text = await res.text();
  assert.ok(text.startsWith("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n") && text.endsWith("COMMIT;\n"), text.slice(0, 200));

  // SQLite (libSQL's local files) rebuilds the same database from the text as it is.
  const dir = tempDir("twill-dump-");
  try {
    const local = createClient({ url: `file:${path.join(dir, "from-dump.db")}` });
    await local.executeMultiple(text);
    assert.deepEqual(Array.from((await local.execute(facts)).rows[0]), want);
    const next = await local.execute("INSERT INTO \"Users\" (name) VALUES ('next') RETURNING id");
    assert.equal(next.rows[0][0], 9001, "the AUTOINCREMENT counter came along");
    local.close();
  } finally {
    removeDir(dir);
  }

  // It imports back here, as one commit, plain or gzip-compressed.
  const put = async (isolate, name, body, headers) => {
    const w = await mf.getWorker(isolate);
    const r = await w.fetch(`http://localhost/v1/db/${name}/import`, { method: "PUT", headers, body });
    return { status: r.status, body: await r.json() };
  };
  const plain = await put("a", "from-dump", text, { "content-type": "application/sql" });
  assert.equal(plain.status, 200, JSON.stringify(plain.body));
  assert.ok(plain.body.statements > 3000, JSON.stringify(plain.body));
  assert.equal(plain.body.check, "quick_check");
  assert.deepEqual(await ours("b", "from-dump"), want);
  assert.deepEqual([plain.body.previous, plain.body.bookmark], ["tw0000000000000000", "tw0000000000000001"], "the import is one commit");
  const zipped = await put("b", "from-dump-gz", gzipSync(Buffer.from(text)), { "content-type": "application/sql", "content-encoding": "gzip" });
  assert.equal(zipped.status, 200, JSON.stringify(zipped.body));
  assert.deepEqual(await ours("a", "from-dump-gz"), want);
  const inserted = await call("a", "/v1/db/from-dump-gz/query", { body: { sql: "INSERT INTO \"Users\" (name) VALUES ('next') RETURNING id" } });
  assert.equal(inserted.body.rows[0][0], 9001, "AUTOINCREMENT goes on from the dump's counter");

  const bad = await put("a", "bad-dump", "CREATE TABLE t (x);\nINSERT INTO t VALUES (1);\nINSERT INTO nope VALUES (2);\n", { "content-type": "application/sql" });
  assert.equal(bad.status, 400, JSON.stringify(bad.body));
  assert.equal(bad.body.error.code, "SQL_ERROR");
  assert.match(bad.body.error.message, /statement 3 \(line 3\)/);
  const after = await call("b", "/v1/db/bad-dump/query", { body: { sql: "SELECT count(*) FROM sqlite_schema" } });
  assert.equal(after.body.rows[0][0], 0, "nothing of a failing dump is visible");
  const format = await call("a", `${db}/export?format=csv`);
  assert.equal(format.status, 400);
});

test("regression: an isolate whose first request on a database was not a query (history, export, upload) still sees every later commit", async () => {
  for (const [what, first] of [
    ["history", (db) => call("b", `${db}/history`)],
    ["export", async (db) => (await (await mf.getWorker("b")).fetch(`http://localhost${db}/export`)).arrayBuffer()],
    ["upload", (db) => call("b", `${db}/uploads/0001700000000000-00ff`)],
  ]) {
    const db = `/v1/db/first-${what}`;
    await call("a", `${db}/query`, { body: { sql: "CREATE TABLE t (x)" } });
    await first(db); // opens the database on isolate b
    await call("a", `${db}/query`, { body: { sql: "INSERT INTO t VALUES (1)" } });
    const seen = await call("b", `${db}/query`, { body: { sql: "SELECT count(*) FROM t" } });
    assert.deepEqual(seen.body.rows, [[1]], `${what}: a strict read after the commit sees it`);
  }
});

test("upload sessions: a file in parts over several requests and isolates, resumable, one commit; aborts and bad sessions", async () => {
  const { createClient } = await import("@libsql/client");
  const { readFileSync } = await import("node:fs");
  const { gzipSync } = await import("node:zlib");
  const path = await import("node:path");
  const dir = tempDir("twill-upload-");
  try {
    const file = path.join(dir, "big.db");
    const src = createClient({ url: `file:${file}` });
    await src.batch(
      [
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE, pad BLOB)",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 8000) INSERT INTO t (v, pad) SELECT 'row' || i, randomblob(400) FROM n",
      ],
      "write",
    );
    src.close();
    const bytes = readFileSync(file);
    const partBytes = 1 << 20;
    const parts = [];
    for (let at = 0; at < bytes.length; at += partBytes) parts.push(bytes.subarray(at, at + partBytes));
    assert.ok(parts.length >= 3, `${parts.length} parts`);
    const send = async (isolate, method, url, body, headers = {}) => {
      const worker = await mf.getWorker(isolate);
      const res = await worker.fetch(`http://localhost/v1/db/parts${url}`, { method, headers, body });
      return { status: res.status, body: await res.json() };
    };

    const begun = await send("a", "POST", "/uploads", JSON.stringify({ part_bytes: partBytes }));
    assert.equal(begun.status, 200, JSON.stringify(begun.body));
    const id = begun.body.upload;
    // Parts from both isolates, the last first, one gzip-compressed, one sent twice.
    for (let i = parts.length - 1; i >= 0; i--) {
      const gz = i === 1;
      const r = await send(i % 2 ? "a" : "b", "PUT", `/uploads/${id}/${i}`, gz ? gzipSync(parts[i]) : parts[i], gz ? { "content-encoding": "gzip" } : {});
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual([r.body.part, r.body.bytes, r.body.already_stored], [i, parts[i].length, false]);
    }
    const again = await send("b", "PUT", `/uploads/${id}/0`, parts[0]);
    assert.equal(again.body.already_stored, true);
    const status = await send("b", "GET", `/uploads/${id}`);
    assert.equal(status.body.state, "open");
    assert.equal(status.body.bytes, bytes.length);
    assert.deepEqual(status.body.parts.map((p) => p.part), parts.map((_, i) => i));
    const empty = await call("a", "/v1/db/parts/query", { body: { sql: "SELECT count(*) FROM sqlite_schema" } });
    assert.equal(empty.body.rows[0][0], 0, "nothing is visible before completion");

    const noCount = await send("a", "POST", `/uploads/${id}/complete`);
    assert.equal(noCount.body.error.code, "INVALID_REQUEST", "the completion names its part count");
    const done = await send("a", "POST", `/uploads/${id}/complete`, JSON.stringify({ parts: parts.length }));
    assert.equal(done.status, 200, JSON.stringify(done.body));
    assert.equal(done.body.bytes, bytes.length);
    assert.equal(done.body.bookmark, "tw0000000000000001");
    const rows = await call("b", "/v1/db/parts/query", { body: { sql: "SELECT count(*), sum(length(pad)) FROM t" } });
    assert.deepEqual(rows.body.rows?.[0], [8000, 3200000], JSON.stringify(rows.body));
    assert.equal((await send("b", "GET", `/uploads/${id}`)).status, 404, "the session ended");

    // An aborted session leaves nothing; unknown and malformed ids are 404; a part past
    // part_bytes is refused.
    const other = await send("b", "POST", "/uploads", JSON.stringify({ part_bytes: partBytes, replace: true }));
    const oid = other.body.upload;
    const tooLong = await send("a", "PUT", `/uploads/${oid}/0`, Buffer.concat([parts[0], Buffer.from("x")]));
    assert.equal(tooLong.status, 400);
    assert.equal(tooLong.body.error.code, "LIMIT_EXCEEDED");
    assert.equal((await send("a", "PUT", `/uploads/${oid}/0`, parts[0])).status, 200);
    const missing = await send("a", "POST", `/uploads/${oid}/complete`, JSON.stringify({ parts: 2 }));
    assert.equal(missing.status, 409, JSON.stringify(missing.body));
    assert.equal(missing.body.error.code, "UPLOAD_CONFLICT");
    const aborted = await send("b", "DELETE", `/uploads/${oid}`);
    assert.equal(aborted.status, 200, JSON.stringify(aborted.body));
    assert.ok(aborted.body.objects_deleted >= 5, JSON.stringify(aborted.body));
    assert.equal((await send("a", "PUT", `/uploads/${oid}/1`, parts[1])).status, 404);
    assert.equal((await send("a", "GET", "/uploads/not-an-id")).body.error.code, "UPLOAD_NOT_FOUND");
    const refused = await send("a", "POST", "/uploads", "");
    assert.equal(refused.status, 409, "a database with tables needs replace");
    assert.equal(refused.body.error.code, "DATABASE_NOT_EMPTY");
    assert.equal((await send("a", "POST", "/uploads", JSON.stringify({ part_bytes: 1000 }))).body.error.code, "LIMIT_EXCEEDED");
  } finally {
    removeDir(dir);
  }
});

test("GET /v1/db, GET and DELETE /v1/db/{name}: listings, info, a deletion undone by restore, a purge (history gone, objects purged, forks intact)", async () => {
  const db = "/v1/db/doomed";
  await call("a", `${db}/query`, { body: { sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, pad BLOB)" } });
  const marks = [];
  for (let i = 1; i <= 7; i++) {
    const r = await call(i % 2 ? "a" : "b", `${db}/query`, {
      body: { sql: "INSERT INTO t (v, pad) SELECT ?, randomblob(3000) FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3)", params: [`d${i}`] },
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    marks.push(r.body.meta.bookmark);
  }
  const fork = await call("b", `${db}/fork`, { body: { to: "doomed-fork", bookmark: marks[4] } });
  assert.equal(fork.status, 200, JSON.stringify(fork.body));
  const bucket = await mf.getR2Bucket("BUCKET", "a");
  const keys = async (prefix) => {
    const out = [];
    let cursor;
    do {
      const page = await bucket.list({ prefix, cursor });
      out.push(...page.objects.map((o) => o.key));
      cursor = page.truncated ? page.cursor : undefined;
    } while (cursor);
    return out;
  };
  const before = await keys("db/doomed/");
  assert.ok(before.some((k) => k.includes("/chunk/")) && before.some((k) => k.includes("/log/")), before.join(" "));

  // Only DELETE on the database itself deletes.
  assert.equal((await call("a", `${db}/`, { method: "POST", body: {} })).status, 404);
  const listed = async (isolate, query = "") => {
    const names = [];
    let after = null;
    do {
      const sep = query ? "&" : "";
      const r = await call(isolate, `/v1/db?limit=2${sep}${query}${after ? `&after=${after}` : ""}`);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.ok(r.body.databases.length <= 2);
      names.push(...r.body.databases.map((d) => (d.deleted ? `${d.name} (deleted)` : d.name)));
      after = r.body.next;
    } while (after);
    return names;
  };
  assert.ok((await listed("a")).includes("doomed"));
  const info = await call("b", db);
  assert.equal(info.status, 200, JSON.stringify(info.body));
  assert.equal(info.body.bookmark, marks[6]);
  assert.ok(info.body.size_bytes >= 21 * 3000 && info.body.page_count * info.body.page_size === info.body.size_bytes, JSON.stringify(info.body));
  assert.equal(info.body.deleted, undefined);
  assert.deepEqual((await call("a", "/v1/db/doomed-fork")).body.forked_from, { database: "doomed", bookmark: marks[4] });
  assert.equal(info.body.forked_from, null);
  assert.equal((await call("a", "/v1/db/never-used")).body.error.code, "DATABASE_NOT_FOUND");

  // A deletion keeps the history: listings leave the database out, restoring undoes it.
  const soft = await call("b", db, { method: "DELETE" });
  assert.equal(soft.status, 200, JSON.stringify(soft.body));
  assert.equal(soft.body.previous, marks[6]);
  assert.equal(soft.body.published, true);
  assert.equal(soft.body.purge, undefined);
  assert.equal((await call("a", `${db}/query`, { body: { sql: "SELECT count(*) FROM sqlite_schema" } })).body.rows[0][0], 0);
  assert.ok(!(await listed("a")).includes("doomed"));
  assert.ok((await listed("b", "deleted=true")).includes("doomed (deleted)"));
  const deletedInfo = await call("a", db);
  assert.deepEqual(deletedInfo.body.deleted?.restore, { bookmark: marks[6] }, JSON.stringify(deletedInfo.body));
  const undo = await call("a", `${db}/restore`, { body: { bookmark: deletedInfo.body.deleted.restore.bookmark } });
  assert.equal(undo.status, 200, JSON.stringify(undo.body));
  assert.deepEqual((await call("b", `${db}/query`, { body: { sql: "SELECT count(*) FROM t" } })).body.rows[0], [21]);
  assert.ok((await listed("b")).includes("doomed"), "listed again once restored");
  assert.equal((await call("b", "/v1/db?limit=0")).body.error.code, "INVALID_REQUEST");

  // A purge ends the history and deletes the old objects.
  const beforePurge = await keys("db/doomed/");
  const deleted = await call("b", `${db}?purge=true`, { method: "DELETE" });
  assert.equal(deleted.status, 200, JSON.stringify(deleted.body));
  assert.equal(deleted.body.deleted, "doomed");
  assert.equal(deleted.body.purge.complete, true);
  assert.ok(deleted.body.purge.objects_deleted > 2, JSON.stringify(deleted.body)); // chunks and history entries
  assert.ok(deleted.body.bookmark > marks[6], "the deletion is a commit after the last write");

  // Both isolates (a had it open) answer from the empty database.
  for (const isolate of ["a", "b"]) {
    const r = await call(isolate, `${db}/query`, { body: { sql: "SELECT count(*) FROM sqlite_schema" } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.rows[0][0], 0);
    const gone = await call(isolate, `${db}/query`, { body: { sql: "SELECT count(*) FROM t" } });
    assert.equal(gone.status, 400);
    assert.equal(gone.body.error.code, "SQL_ERROR");
  }
  // The past is gone with it.
  const past = await call("a", `${db}/query`, { body: { sql: "SELECT 1", as_of: marks[2] } });
  assert.equal(past.body.error?.code, "HISTORY_UNAVAILABLE", JSON.stringify(past.body));
  const restore = await call("b", `${db}/restore`, { body: { bookmark: marks[2] } });
  assert.equal(restore.body.error?.code, "HISTORY_UNAVAILABLE", JSON.stringify(restore.body));
  const history = await call("a", `${db}/history`);
  assert.equal(history.body.window.from, deleted.body.bookmark);

  // In R2: the manifest, the fork's reference and the chunks it uses, and the log records,
  // which stay for the GC window (10 minutes here) until the scheduled sweep.
  assert.equal(deleted.body.purge.log_records_left, true, JSON.stringify(deleted.body));
  const after = await keys("db/doomed/");
  const chunks = after.filter((k) => k.includes("/chunk/"));
  assert.equal(chunks.length, deleted.body.purge.chunks_kept_for_forks, after.join(" "));
  const others = after.filter((k) => !k.includes("/chunk/") && !k.includes("/forks/") && !k.endsWith("/manifest"));
  assert.ok(others.length > 1 && others.every((k) => k.includes("/log/")), others.join(" "));
  const notLog = (ks) => ks.filter((k) => !k.includes("/log/")).length;
  assert.ok(notLog(after) < notLog(beforePurge), `${notLog(after)} of ${notLog(beforePurge)} objects (not counting the log) left`);

  // The fork reads all it had; the name works again at once.
  const forked = await call("a", "/v1/db/doomed-fork/query", { body: { sql: "SELECT count(*), sum(length(pad)) FROM t" } });
  assert.deepEqual(forked.body.rows[0], [15, 45000]);
  assert.equal((await call("a", `${db}/query`, { body: { sql: "CREATE TABLE t (x)" } })).status, 200);
  assert.equal((await call("b", `${db}/query`, { body: { sql: "INSERT INTO t VALUES (1)" } })).status, 200);
  assert.equal((await call("a", `${db}/query`, { body: { sql: "SELECT count(*) FROM t" } })).body.rows[0][0], 1);
});

// Runs `run` against a Worker of its own with these settings (short windows) on a fresh
// bucket: `send` a request, `q` a statement, `keys` under a prefix, `sweep` (the cron).
async function withSweepWorker(bindings, run) {
  const dir = tempDir();
  const short = new Miniflare({ r2Persist: dir, workers: [engineWorker("s", { bindings })] });
  try {
    const worker = await short.getWorker("s");
    const bucket = await short.getR2Bucket("BUCKET", "s");
    const send = async (path, init = {}) => {
      const res = await worker.fetch(`http://localhost${path}`, { headers: { "content-type": "application/json" }, ...init });
      return { status: res.status, body: await res.json() };
    };
    const q = (db, sql) => send(`/v1/db/${db}/query`, { method: "POST", body: JSON.stringify({ sql }) });
    const keys = async (prefix) => (await bucket.list({ prefix, limit: 1000 })).objects.map((o) => o.key);
    const sweep = () => worker.scheduled({ cron: "*/10 * * * *" });
    await run({ send, q, keys, sweep });
  } finally {
    await short.dispose();
    removeDir(dir);
  }
}

test("a purge's log records stay for the GC window, then the scheduled sweep deletes them", async () => {
  const bindings = { TWILL_HISTORY_RETENTION_MS: "0", TWILL_GC_RETENTION_MS: "1500" };
  await withSweepWorker(bindings, async ({ send, q: query, keys, sweep }) => {
    const q = (sql) => query("p", sql);
    const logKeys = () => keys("db/p/log/");
    assert.equal((await q("CREATE TABLE t (x)")).status, 200);
    for (let i = 0; i < 4; i++) assert.equal((await q(`INSERT INTO t VALUES (${i})`)).status, 200);
    const purged = await send("/v1/db/p?purge=true", { method: "DELETE" });
    assert.equal(purged.status, 200, JSON.stringify(purged.body));
    assert.equal(purged.body.purge.complete, true, JSON.stringify(purged.body));
    assert.equal(purged.body.purge.log_records_left, true, JSON.stringify(purged.body));
    const left = await logKeys();
    assert.ok(left.length >= 6, left.join(" "));
    await sweep();
    assert.equal((await logKeys()).length, left.length, "inside the GC window the sweep leaves them");
    await new Promise((r) => setTimeout(r, 2000));
    await sweep();
    const swept = await logKeys();
    assert.deepEqual(swept, [left[left.length - 1]], "only the deletion's own record is left");
    assert.equal((await q("SELECT count(*) FROM sqlite_schema")).body.rows[0][0], 0);
  });
});

test("the scheduled sweep purges databases deleted longer ago than the history window, and no others", async () => {
  const bindings = { TWILL_HISTORY_RETENTION_MS: "1500", TWILL_GC_RETENTION_MS: "0" };
  await withSweepWorker(bindings, async ({ send, q, keys, sweep }) => {
    for (const db of ["gone", "kept", "reused"]) {
      assert.equal((await q(db, "CREATE TABLE t (x)")).status, 200);
      assert.equal((await q(db, "INSERT INTO t VALUES (randomblob(50000))")).status, 200);
    }
    const gone = await send("/v1/db/gone", { method: "DELETE" });
    assert.equal(gone.status, 200, JSON.stringify(gone.body));
    await send("/v1/db/reused", { method: "DELETE" });
    await q("reused", "CREATE TABLE again (y)");
    const firstRecord = "db/gone/log/00000000000000000001";

    // Inside the window nothing is purged: the deletion can still be undone.
    await sweep();
    assert.ok((await keys("db/gone/")).includes(firstRecord));
    assert.equal((await send("/v1/db/gone")).body.deleted.restore.bookmark, gone.body.previous);

    await new Promise((r) => setTimeout(r, 2000));
    for (let run = 0; run < 3; run++) await sweep();
    const left = await keys("db/gone/");
    assert.ok(!left.includes(firstRecord), left.join(" "));
    assert.ok(left.every((k) => k.endsWith("/manifest") || k.includes("/log/") || k.includes("/checkpoint/")), left.join(" "));
    const undo = await send("/v1/db/gone/restore", { method: "POST", body: JSON.stringify({ bookmark: gone.body.previous }) });
    assert.equal(undo.body.error?.code, "HISTORY_UNAVAILABLE", JSON.stringify(undo.body));
    // The others keep everything.
    assert.equal((await q("kept", "SELECT length(x) FROM t")).body.rows[0][0], 50000);
    assert.equal((await q("reused", "SELECT count(*) FROM again")).body.rows[0][0], 0);
    assert.ok((await keys("db/kept/")).includes("db/kept/log/00000000000000000001"));
  });
});
