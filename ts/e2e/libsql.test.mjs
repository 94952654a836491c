// The real @libsql/client (HTTP URL) and Drizzle ORM against the Worker in workerd with
// miniflare's R2: every value type, batches in write and read mode, executeMultiple,
// rollback of a failing batch, interactive transactions refused clearly, auth tokens.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createClient } from "@libsql/client";
import * as hrana from "@libsql/hrana-client";
import { drizzle } from "drizzle-orm/libsql";
import { migrate } from "drizzle-orm/libsql/migrator";
import { sqliteTable, integer, text, blob } from "drizzle-orm/sqlite-core";
import { eq, gt, sql } from "drizzle-orm";
import { startEngine } from "./harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
let engine;
before(async () => {
  engine = await startEngine();
});
after(async () => engine?.stop());

const client = (db, opts = {}) => createClient({ url: `${engine.url}/v1/db/${db}/`, intMode: "bigint", ...opts });

test("execute: every value type, including 2^63-1 and blobs", async () => {
  const c = client("libsql-values");
  await c.execute("CREATE TABLE v(i INTEGER, r REAL, t TEXT, b BLOB, n)");
  const blob = new Uint8Array([0, 1, 2, 254, 255]);
  const ins = await c.execute({
    sql: "INSERT INTO v VALUES (?, ?, ?, ?, ?)",
    args: [9223372036854775807n, 0.5, "héllo ☃", blob, null],
  });
  assert.equal(ins.rowsAffected, 1);
  assert.equal(ins.lastInsertRowid, 1n);
  await c.execute({ sql: "INSERT INTO v VALUES (:i, :r, :t, :b, :n)", args: { i: -9223372036854775808n, r: -1e300, t: "", b: new Uint8Array(), n: null } });
  const rs = await c.execute("SELECT i, r, t, b, n FROM v ORDER BY rowid");
  assert.deepEqual(rs.columns, ["i", "r", "t", "b", "n"]);
  assert.deepEqual(rs.columnTypes, ["INTEGER", "REAL", "TEXT", "BLOB", ""]);
  assert.equal(rs.rows[0].i, 9223372036854775807n);
  assert.equal(rs.rows[0].r, 0.5);
  assert.equal(rs.rows[0].t, "héllo ☃");
  assert.deepEqual(new Uint8Array(rs.rows[0].b), blob);
  assert.equal(rs.rows[0].n, null);
  assert.equal(rs.rows[1].i, -9223372036854775808n);
  assert.equal(rs.rows[1].r, -1e300);
  assert.equal(new Uint8Array(rs.rows[1].b).length, 0);
  c.close();
});

test("batch in write and read mode; a failing batch rolls back; executeMultiple", async () => {
  const c = client("libsql-batch");
  const created = await c.batch(
    ["CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL CHECK (bal >= 0))",
     { sql: "INSERT INTO acct VALUES (1, ?), (2, ?)", args: [100, 0] }],
    "write",
  );
  assert.equal(created.length, 2);
  assert.equal(created[1].rowsAffected, 2);
  await assert.rejects(
    c.batch(["UPDATE acct SET bal = bal + 50 WHERE id = 2", "UPDATE acct SET bal = bal - 500 WHERE id = 1"], "write"),
    /CHECK|constraint/i,
  );
  const read = await c.batch(["SELECT bal FROM acct WHERE id = 1", "SELECT bal FROM acct WHERE id = 2"], "read");
  assert.deepEqual(read.map((r) => r.rows[0].bal), [100n, 0n], "the failed batch changed nothing");
  await c.executeMultiple("INSERT INTO acct VALUES (3, 3); INSERT INTO acct VALUES (4, 4); -- done");
  assert.equal((await c.execute("SELECT count(*) AS n FROM acct")).rows[0].n, 4n);
  await assert.rejects(c.batch(["INSERT INTO acct VALUES (9, 9)"], "read"), /read|not allowed|readonly/i);
  c.close();
});

test("without a baton key, interactive transactions are refused and nothing runs outside them", async () => {
  const keyless = await startEngine({ extra: { bindings: { TWILL_BATON_KEY: "" } } });
  try {
    const c = createClient({ url: `${keyless.url}/v1/db/libsql-tx/`, intMode: "bigint" });
    await c.execute("CREATE TABLE t(x)");
    const tx = await c.transaction("write");
    await assert.rejects(tx.execute("INSERT INTO t VALUES (1)"), (e) => {
      assert.match(e.message, /TWILL_BATON_KEY/);
      assert.equal(e.code, "TRANSACTION_NOT_SUPPORTED");
      return true;
    });
    // The client closes the transaction itself; the server would refuse anything sent in
    // it until a ROLLBACK (tested over raw Hrana in compat.test.mjs).
    await assert.rejects(tx.execute("INSERT INTO t VALUES (2)"), /TRANSACTION_NOT_SUPPORTED|TRANSACTION_CLOSED/);
    tx.close();
    assert.equal((await c.execute("SELECT count(*) AS n FROM t")).rows[0].n, 0n);
    c.close();
  } finally {
    await keyless.stop();
  }
});

test("Hrana cursors (v3/cursor) through @libsql/hrana-client at protocol version 3: rows, step errors, skipped steps, a transaction across cursors", async () => {
  // The Rust libsql crate's remote query() reads through v3/cursor (JSON) without probing.
  // @libsql/hrana-client 0.10 has the same JSON cursor code, but its probe list has the v3
  // JSON endpoint commented out (it only finds v3-protobuf), so the test hands its client
  // that endpoint directly; everything after that is the npm client's own code.
  const v3json = { versionPath: "v3", pipelinePath: "v3/pipeline", cursorPath: "v3/cursor", version: 3, encoding: "json" };
  const open = async () => {
    const c = hrana.openHttp(new URL(`${engine.url}/v1/db/libsql-cursor/`));
    await c.getVersion(); // lets the client settle on its own endpoint first
    c._endpoint = v3json;
    c._endpointPromise = Promise.resolve(v3json);
    return c;
  };
  const client = await open();
  assert.equal(await client.getVersion(), 3);
  const probe = await fetch(`${engine.url}/v1/db/libsql-cursor/v3`);
  assert.equal(probe.status, 200, "the v3 JSON endpoint answers its probe");
  let stream = client.openStream();
  let batch = stream.batch(true);
  const create = batch.step();
  const created = create.run("CREATE TABLE c(id INTEGER PRIMARY KEY, name TEXT NOT NULL, b BLOB)");
  const inserted = batch.step().condition(hrana.BatchCond.ok(create))
    .run(["INSERT INTO c(name, b) VALUES (?, ?), (?, ?)", ["ada", new Uint8Array([1, 2]), "bob", null]]);
  await batch.execute();
  assert.ok(await created);
  assert.equal((await inserted).affectedRowCount, 2);
  assert.equal((await inserted).lastInsertRowid, 2n);

  batch = stream.batch(true);
  const all = batch.step();
  const rows = all.query("SELECT id, name, b FROM c ORDER BY id");
  const failing = batch.step();
  const failed = failing.query("SELECT nope FROM c");
  const skipped = batch.step().condition(hrana.BatchCond.ok(failing)).query("SELECT 1");
  const after = batch.step().condition(hrana.BatchCond.error(failing)).queryValue("SELECT count(*) FROM c");
  await batch.execute();
  const got = await rows;
  assert.deepEqual(got.columnNames, ["id", "name", "b"]);
  assert.equal(got.rows.length, 2);
  assert.equal(got.rows[0].name, "ada");
  assert.deepEqual(new Uint8Array(got.rows[0].b), new Uint8Array([1, 2]));
  assert.equal(got.rows[1].b, null);
  await assert.rejects(failed, (e) => /no such column/i.test(e.message) && e.code === "SQLITE_ERROR");
  assert.equal(await skipped, undefined, "a step whose condition is false has no result");
  assert.equal((await after).value, 2);
  stream.close();

  // An interactive transaction whose statements come through cursors, one request each
  // (the stream's baton carries it), then committed: the other client sees it only then.
  stream = client.openStream();
  batch = stream.batch(true);
  batch.step().run("BEGIN IMMEDIATE");
  const inTx = batch.step().run("INSERT INTO c(name) VALUES ('carol')");
  await batch.execute();
  assert.equal((await inTx).affectedRowCount, 1);
  const other = await open();
  const outside = other.openStream();
  assert.equal((await outside.queryValue("SELECT count(*) FROM c")).value, 2, "not visible before COMMIT");
  batch = stream.batch(true);
  const inside = batch.step().queryValue("SELECT count(*) FROM c");
  batch.step().run("COMMIT");
  await batch.execute();
  assert.equal((await inside).value, 3);
  assert.equal((await outside.queryValue("SELECT count(*) FROM c")).value, 3);
  stream.close();
  outside.close();
  other.close();
  client.close();

  // A malformed cursor request is refused as a whole, in Hrana's shape.
  const res = await fetch(`${engine.url}/v1/db/libsql-cursor/v3/cursor`, { method: "POST", body: JSON.stringify({ steps: [] }) });
  assert.equal(res.status, 400);
  assert.equal((await res.json()).error.code, "HRANA_PROTO_ERROR");
});

test("URLs without the database and trailing slash get a clear error", async () => {
  const c = createClient({ url: `${engine.url}/v1/db/libsql-values` });
  await assert.rejects(c.execute("SELECT 1"), /must name the database and end with '\/'/);
  c.close();
});

test("authToken: refused without it, accepted with it, read-only tokens cannot write", async () => {
  const tokens = [
    { token: "libsql-full-token-0123", access: "write" },
    { token: "libsql-read-token-0123", access: "read" },
  ];
  const secured = await startEngine({ extra: { bindings: { TWILL_TOKENS: JSON.stringify(tokens) } } });
  try {
    const url = `${secured.url}/v1/db/auth-db/`;
    await assert.rejects(createClient({ url }).execute("SELECT 1"), /token|Authorization/i);
    await assert.rejects(createClient({ url, authToken: "wrong-token-000000000" }).execute("SELECT 1"), /invalid token/);
    const full = createClient({ url, authToken: tokens[0].token });
    await full.execute("CREATE TABLE t(x)");
    const ro = createClient({ url, authToken: tokens[1].token });
    assert.equal((await ro.execute("SELECT count(*) AS n FROM t")).rows[0].n, 0);
    await assert.rejects(ro.execute("INSERT INTO t VALUES (1)"), /read-only/);
  } finally {
    await secured.stop();
  }
});

test("Drizzle ORM: schema, migration and queries through drizzle-orm/libsql", async () => {
  const users = sqliteTable("users", {
    id: integer("id").primaryKey({ autoIncrement: true }),
    name: text("name").notNull(),
    age: integer("age"),
    avatar: blob("avatar", { mode: "buffer" }),
  });
  const c = client("drizzle", { intMode: "number" });
  const db = drizzle(c);
  await migrate(db, { migrationsFolder: path.join(here, "fixtures/drizzle") });
  await migrate(db, { migrationsFolder: path.join(here, "fixtures/drizzle") }); // idempotent
  const inserted = await db.insert(users).values([
    { name: "ada", age: 36, avatar: Buffer.from([1, 2, 3]) },
    { name: "alan", age: 41 },
    { name: "grace", age: 85 },
  ]).returning({ id: users.id });
  assert.deepEqual(inserted.map((r) => r.id), [1, 2, 3]);
  await db.update(users).set({ age: 42 }).where(eq(users.name, "alan"));
  const older = await db.select({ name: users.name }).from(users).where(gt(users.age, 40)).orderBy(users.name);
  assert.deepEqual(older.map((r) => r.name), ["alan", "grace"]);
  const [ada] = await db.select().from(users).where(eq(users.id, 1));
  assert.deepEqual([...ada.avatar], [1, 2, 3]);
  const [{ n }] = await db.all(sql`SELECT count(*) AS n FROM __drizzle_migrations`);
  assert.equal(n, 1);
  await db.batch([db.delete(users).where(eq(users.id, 3)), db.insert(users).values({ name: "edsger", age: 72 })]);
  assert.deepEqual((await db.select({ name: users.name }).from(users).orderBy(users.id)).map((r) => r.name), ["ada", "alan", "edsger"]);
  c.close();
});
