// The walking skeleton end to end: the real Worker (wasm) in workerd, miniflare's R2,
// SQL over HTTP, and every acknowledged write surviving a restart of the runtime.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startEngine, tempDir, removeDir, query, batch, post } from "./harness.mjs";

let persistDir, engine, base;

before(async () => {
  persistDir = tempDir();
  engine = await startEngine({ persistDir });
  base = engine.url;
});

after(async () => {
  await engine?.stop();
  removeDir(persistDir);
});

async function ok(promise) {
  const r = await promise;
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

test("create, insert, select", async () => {
  await ok(query(base, "basic", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)"));
  const ins = await ok(query(base, "basic", "INSERT INTO t (name) VALUES (?), (?)", ["a", "b"]));
  assert.equal(ins.rows_affected, 2);
  assert.equal(ins.last_insert_rowid, 2);
  assert.equal(ins.meta.r2_writes, 1, "one R2 write per commit");
  const sel = await ok(query(base, "basic", "SELECT id, name FROM t ORDER BY id"));
  assert.deepEqual(sel.columns, ["id", "name"]);
  assert.deepEqual(sel.rows, [[1, "a"], [2, "b"]]);
  assert.equal(sel.last_insert_rowid, null);
  assert.equal(sel.meta.r2_writes, 0, "a read makes no R2 write");
  assert.equal(typeof sel.meta.duration_ms, "number");
});

test("every value type round-trips, including blobs and 2^63-1", async () => {
  await ok(query(base, "types", "CREATE TABLE v (i INTEGER, r REAL, t TEXT, b BLOB, n)"));
  const blob = Buffer.from([0, 1, 2, 253, 254, 255]).toString("base64");
  await ok(
    query(base, "types", "INSERT INTO v VALUES (?, ?, ?, ?, ?)", [
      { int: "9223372036854775807" },
      3.25,
      "héllo ✓",
      { base64: blob },
      null,
    ]),
  );
  await ok(query(base, "types", "INSERT INTO v (i) VALUES (:small), (:neg)", { small: 42, neg: { int: "-9223372036854775808" } }));
  const sel = await ok(query(base, "types", "SELECT i, r, t, b, n, typeof(b) FROM v ORDER BY rowid"));
  assert.deepEqual(sel.rows[0], [{ int: "9223372036854775807" }, 3.25, "héllo ✓", { base64: blob }, null, "blob"]);
  assert.deepEqual(sel.rows[1][0], 42);
  assert.deepEqual(sel.rows[2][0], { int: "-9223372036854775808" });
  const arith = await ok(query(base, "types", "SELECT i - 1 FROM v WHERE rowid = 1"));
  assert.deepEqual(arith.rows, [[{ int: "9223372036854775806" }]]);
});

test("a batch is one transaction: a failing statement rolls back the whole batch", async () => {
  await ok(query(base, "batch", "CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)"));
  const good = await ok(
    batch(base, "batch", [
      { sql: "INSERT INTO acct VALUES (1, 100)" },
      { sql: "INSERT INTO acct VALUES (2, 50)" },
      { sql: "SELECT sum(bal) AS total FROM acct" },
    ]),
  );
  assert.equal(good.results.length, 3);
  assert.deepEqual(good.results[2].rows, [[150]]);
  assert.equal(good.meta.r2_writes, 1, "a batch commits with one R2 write");
  const bad = await batch(base, "batch", [
    { sql: "UPDATE acct SET bal = bal - 30 WHERE id = 1" },
    { sql: "UPDATE acct SET bal = bal + 30 WHERE id = 2" },
    { sql: "INSERT INTO acct VALUES (1, 0)" },
  ]);
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.code, "SQL_ERROR");
  const after = await ok(query(base, "batch", "SELECT id, bal FROM acct ORDER BY id"));
  assert.deepEqual(after.rows, [[1, 100], [2, 50]]);
});

test("a SQL error leaves the data unchanged and is a JSON error", async () => {
  await ok(query(base, "errs", "CREATE TABLE u (x TEXT UNIQUE)"));
  await ok(query(base, "errs", "INSERT INTO u VALUES ('a')"));
  for (const [sql, params] of [
    ["INSERT INTO u VALUES ('a')", undefined],
    ["INSERT INTO missing VALUES (1)", undefined],
    ["SELEC nonsense", undefined],
    ["INSERT INTO u VALUES (?)", []],
    ["BEGIN", undefined],
    ["SELECT 1; DELETE FROM u", undefined],
  ]) {
    const r = await query(base, "errs", sql, params);
    assert.equal(r.status, 400, `${sql}: ${JSON.stringify(r.body)}`);
    assert.equal(typeof r.body.error.code, "string");
    assert.equal(typeof r.body.error.message, "string");
  }
  const sel = await ok(query(base, "errs", "SELECT x FROM u"));
  assert.deepEqual(sel.rows, [["a"]]);
});

test("two databases are isolated", async () => {
  await ok(query(base, "iso-a", "CREATE TABLE only_in_a (x)"));
  await ok(query(base, "iso-a", "INSERT INTO only_in_a VALUES (1)"));
  const r = await query(base, "iso-b", "SELECT * FROM only_in_a");
  assert.equal(r.status, 400);
  assert.match(r.body.error.message, /only_in_a/);
});

test("routes, methods, names and bodies are checked", async () => {
  const get = await fetch(`${base}/v1/db/x/query`);
  assert.equal(get.status, 405);
  assert.equal((await get.json()).error.code, "METHOD_NOT_ALLOWED");
  const nf = await fetch(`${base}/nope`);
  assert.equal(nf.status, 404);
  assert.equal((await nf.json()).error.code, "NOT_FOUND");
  const badName = await query(base, "Bad.Name", "SELECT 1");
  assert.equal(badName.status, 400);
  assert.equal(badName.body.error.code, "INVALID_DATABASE_NAME");
  const malformed = await post(`${base}/v1/db/x/query`, "{not json");
  assert.equal(malformed.status, 400);
  assert.equal(malformed.body.error.code, "INVALID_REQUEST");
  const huge = await post(`${base}/v1/db/x/query`, JSON.stringify({ sql: "SELECT ?", params: ["x".repeat(9 << 20)] }));
  assert.equal(huge.status, 413);
  assert.equal(huge.body.error.code, "PAYLOAD_TOO_LARGE");
  const bigInt = await post(`${base}/v1/db/x/query`, '{"sql":"SELECT ?","params":[18446744073709551615]}');
  assert.equal(bigInt.status, 400);
  // A body without a declared length (chunked) is read by the engine, not the JS entry.
  const streamed = await fetch(`${base}/v1/db/x/query`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    duplex: "half",
    body: new Blob([JSON.stringify({ sql: "SELECT 2 AS two" })]).stream(),
  });
  assert.equal(streamed.status, 200);
  assert.deepEqual((await streamed.json()).rows, [[2]]);
  const still = await ok(query(base, "x", "SELECT 1 AS one"));
  assert.deepEqual(still.rows, [[1]]);
});

test("persistence: a new runtime on the same R2 directory has every acknowledged write", async () => {
  await ok(query(base, "persist", "CREATE TABLE log (id INTEGER PRIMARY KEY, v TEXT)"));
  const acked = [];
  for (let i = 0; i < 25; i++) {
    const r = await ok(query(base, "persist", "INSERT INTO log (v) VALUES (?)", [`v${i}`]));
    acked.push([r.last_insert_rowid, `v${i}`]);
  }
  await ok(batch(base, "persist", [{ sql: "UPDATE log SET v = v || '!' WHERE id % 5 = 0" }]));
  await engine.stop();
  engine = await startEngine({ persistDir });
  base = engine.url;
  const sel = await ok(query(base, "persist", "SELECT id, v FROM log ORDER BY id"));
  assert.deepEqual(
    sel.rows,
    acked.map(([id, v]) => [id, id % 5 === 0 ? `${v}!` : v]),
  );
  assert.ok(sel.meta.r2_reads > 0, "a fresh runtime reads from R2");
  const again = await ok(query(base, "basic", "SELECT count(*) FROM t"));
  assert.deepEqual(again.rows, [[2]]);
});
