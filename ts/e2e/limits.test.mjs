// Every documented limit triggers its documented error, a runaway query is interrupted by
// the per-request VM-step budget while the isolate keeps serving, and SQL that reads the
// clock or opens turso's temp database works in workerd (no wasm panic).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startEngine, post, query, batch, tempDir, removeDir } from "./harness.mjs";

let engine, base;
before(async () => {
  engine = await startEngine();
  base = engine.url;
});
after(async () => engine?.stop());

const expectError = (r, status, code, messagePart) => {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(r.body.error.code, code);
  if (messagePart) assert.match(r.body.error.message, messagePart);
};

test("each request limit answers with its code and names the limit", async () => {
  expectError(await query(base, "lim", "SELECT '" + "x".repeat(100_001) + "'"), 400, "LIMIT_EXCEEDED", /SQL_LENGTH/);
  expectError(await batch(base, "lim", Array.from({ length: 10_001 }, () => ({ sql: "SELECT 1" }))), 400, "LIMIT_EXCEEDED", /BATCH_STATEMENTS/);
  expectError(await query(base, "lim", "SELECT 1", Array(1001).fill(1)), 400, "LIMIT_EXCEEDED", /PARAMS/);
  expectError(await post(`${base}/v1/db/lim/query`, JSON.stringify({ sql: "SELECT ?", params: ["x".repeat(8 << 20)] })), 413, "PAYLOAD_TOO_LARGE", /BODY_SIZE/);
  expectError(
    await query(base, "lim", "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 100001) SELECT x FROM r"),
    400, "LIMIT_EXCEEDED", /RESULT_ROWS/,
  );
  expectError(
    await query(base, "lim", "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 20) SELECT randomblob(1000000) FROM r"),
    400, "LIMIT_EXCEEDED", /RESULT_BYTES/,
  );
});

test("a runaway query is interrupted, changes nothing, and the next request succeeds", async () => {
  await query(base, "runaway", "CREATE TABLE t(x)");
  const started = Date.now();
  const r = await batch(base, "runaway", [
    { sql: "INSERT INTO t VALUES (1)" },
    { sql: "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT max(x) FROM r" },
  ]);
  const elapsed = Date.now() - started;
  expectError(r, 400, "QUERY_INTERRUPTED", /VM_STEPS/);
  console.log(`runaway query interrupted after ${elapsed} ms`);
  const next = await query(base, "runaway", "SELECT count(*) FROM t");
  assert.equal(next.status, 200);
  assert.deepEqual(next.body.rows, [[0]]);
  // Over Hrana too: the pipeline's step fails, the stream goes on.
  const h = await post(`${base}/v1/db/runaway/v2/pipeline`, { requests: [
    { type: "execute", stmt: { sql: "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT max(x) FROM r" } },
    { type: "close" },
  ] });
  assert.equal(h.status, 200);
  assert.equal(h.body.results[0].error.code, "QUERY_INTERRUPTED");
});

test("clock functions and BEGIN IMMEDIATE work in workerd; TEMP objects are refused", async () => {
  const now = await query(base, "clock", "SELECT datetime('now') AS d, CURRENT_TIMESTAMP AS t, unixepoch() AS u");
  assert.equal(now.status, 200, JSON.stringify(now.body));
  const [d, , u] = now.body.rows[0];
  assert.match(d, /^20\d\d-\d\d-\d\d \d\d:\d\d:\d\d$/);
  assert.ok(Math.abs(u * 1000 - Date.now()) < 120_000, `unixepoch ${u} is close to now`);
  const h = await post(`${base}/v1/db/clock/v2/pipeline`, { requests: [
    { type: "execute", stmt: { sql: "BEGIN IMMEDIATE" } },
    { type: "execute", stmt: { sql: "CREATE TABLE IF NOT EXISTS kept(x)" } },
    { type: "execute", stmt: { sql: "INSERT INTO kept VALUES (1)" } },
    { type: "execute", stmt: { sql: "COMMIT" } },
    { type: "close" },
  ] });
  assert.equal(h.status, 200, JSON.stringify(h.body));
  for (const r of h.body.results) assert.equal(r.type, "ok", JSON.stringify(r));
  expectError(await query(base, "clock", "CREATE TEMP TABLE scratch(x)"), 400, "STATEMENT_NOT_ALLOWED", /TEMP/);
  const still = await query(base, "clock", "SELECT count(*) FROM kept");
  assert.deepEqual(still.body.rows, [[1]]);
});

test("R2_CALLS: a request that needs more R2 calls than an invocation may make is refused by name, changes nothing", async () => {
  const persistDir = tempDir();
  try {
    // 6 MiB of rows, checkpointed into chunks after every commit (no interval between
    // checkpoints), by a Worker without the bound.
    const setup = await startEngine({ persistDir, extra: { bindings: { TWILL_MAX_R2_CALLS: "0", TWILL_CHECKPOINT_INTERVAL_MS: "0" } } });
    await query(setup.url, "calls", "CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB)");
    for (let i = 0; i < 6; i++) {
      const r = await query(setup.url, "calls",
        "WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 1000) INSERT INTO t (pad) SELECT randomblob(1000) FROM s");
      assert.equal(r.status, 200, JSON.stringify(r.body));
    }
    await setup.stop();

    // A cold isolate allowed 12 calls: a point query fits, a full scan does not.
    const bounded = await startEngine({ persistDir, extra: { bindings: { TWILL_MAX_R2_CALLS: "12" } } });
    try {
      const point = await query(bounded.url, "calls", "SELECT length(pad) FROM t WHERE id = 4321");
      assert.equal(point.status, 200, JSON.stringify(point.body));
      assert.equal(point.body.rows[0][0], 1000);
      assert.ok(point.body.meta.r2_reads <= 12, JSON.stringify(point.body.meta));
      expectError(await query(bounded.url, "calls", "SELECT count(*), sum(length(pad)) FROM t"), 400, "LIMIT_EXCEEDED", /R2_CALLS/);
      expectError(await query(bounded.url, "calls", "UPDATE t SET pad = zeroblob(1)"), 400, "LIMIT_EXCEEDED", /R2_CALLS/);
      // The isolate goes on serving, and the refused write changed nothing.
      const after = await query(bounded.url, "calls", "SELECT count(*) FROM t WHERE id BETWEEN 10 AND 20 AND length(pad) = 1000");
      assert.equal(after.status, 200, JSON.stringify(after.body));
      assert.equal(after.body.rows[0][0], 11);
      const write = await query(bounded.url, "calls", "INSERT INTO t (pad) VALUES (x'00')");
      assert.equal(write.status, 200, JSON.stringify(write.body));
    } finally {
      await bounded.stop();
    }
  } finally {
    removeDir(persistDir);
  }
});

// Two inserts into one database, the second sent while the first holds it in the isolate
// (every R2 call takes `latencyMs`). Returns both answers with their ids.
async function twoOverlappingInserts(base, db, latencyMs) {
  const first = query(base, db, "INSERT INTO t VALUES (1)").then((r) => ({ id: 1, r }));
  await new Promise((r) => setTimeout(r, Math.min(50, latencyMs / 8)));
  const second = query(base, db, "INSERT INTO t VALUES (2)").then((r) => ({ id: 2, r }));
  return Promise.all([first, second]);
}

test("QUEUE_WAIT: a request that cannot get its turn on the database in time answers DATABASE_BUSY and runs nothing", { timeout: 60_000 }, async () => {
  const slow = await startEngine({ extra: { bindings: { TWILL_EMULATE_R2_LATENCY_MS: "400", TWILL_QUEUE_WAIT_MS: "100" } } });
  try {
    assert.equal((await query(slow.url, "queue", "CREATE TABLE t (id INTEGER PRIMARY KEY)")).status, 200);
    const answers = await twoOverlappingInserts(slow.url, "queue", 400);
    const ok = answers.filter((a) => a.r.status === 200);
    const busy = answers.filter((a) => a.r.status !== 200);
    assert.equal(ok.length, 1, JSON.stringify(answers));
    assert.equal(busy.length, 1, JSON.stringify(answers));
    expectError(busy[0].r, 503, "DATABASE_BUSY", /QUEUE_WAIT/);
    const rows = await query(slow.url, "queue", "SELECT id FROM t");
    assert.deepEqual(rows.body.rows, [[ok[0].id]], "the busy request's insert did not run");
  } finally {
    await slow.stop();
  }
});

test("HOLD_LIMIT: a hold past its limit is reaped, the database reopened, and a holder that was only slow is fenced", { timeout: 60_000 }, async () => {
  const slow = await startEngine({ extra: { bindings: { TWILL_EMULATE_R2_LATENCY_MS: "400", TWILL_HOLD_LIMIT_MS: "100" } } });
  try {
    assert.equal((await query(slow.url, "hold", "CREATE TABLE t (id INTEGER PRIMARY KEY)")).status, 200);
    const stats = async () => (await fetch(`${slow.url}/v1/db/hold/stats`)).json();
    const opensBefore = (await stats()).opens;
    assert.equal(opensBefore, 1);
    const answers = await twoOverlappingInserts(slow.url, "hold", 400);
    // The reaped holder finished its own request after all: both commits are acknowledged,
    // one of them after losing the race for the next log position and catching up.
    for (const a of answers) assert.equal(a.r.status, 200, JSON.stringify(a.r.body));
    const after = await stats();
    assert.equal(after.opens, opensBefore + 1, `the waiter reaped the hold and reopened the database: ${JSON.stringify(after)}`);
    const rows = await query(slow.url, "hold", "SELECT id FROM t ORDER BY id");
    assert.deepEqual(rows.body.rows, [[1], [2]]);
  } finally {
    await slow.stop();
  }
});

test("memory: an isolate holding as many databases open as it keeps (16) stays far inside its 128 MB", async () => {
  // turso reserved two zeroed 3 MiB buffer arenas per open database: 16 small databases
  // took about 100 MiB of the isolate's wasm memory before any page was cached.
  // A runtime of its own: wasm memory only grows, so other tests' peaks would count.
  const own = await startEngine();
  try {
    const names = Array.from({ length: 16 }, (_, i) => `mem_${i}`);
    for (const db of names) {
      const r = await batch(own.url, db, [{ sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)" }, { sql: "INSERT INTO t (v) VALUES ('x')" }]);
      assert.equal(r.status, 200, JSON.stringify(r.body));
    }
    for (const db of names) {
      const stats = await (await fetch(`${own.url}/v1/db/${db}/stats`)).json();
      assert.equal(stats.open_in_this_isolate, true, `${db} is still open`);
    }
    const { wasm_memory_bytes } = await (await fetch(`${own.url}/v1/db/${names[0]}/stats`)).json();
    const mib = wasm_memory_bytes / 1048576;
    assert.ok(mib < 24, `wasm memory with 16 databases open: ${mib.toFixed(1)} MiB`);
  } finally {
    await own.stop();
  }
});

test("memory: 16 open databases that each read more than their share of turso's page cache stay inside 128 MB", { timeout: 180_000 }, async () => {
  // turso keeps up to 2,000 parsed pages (8 MiB) per database unless the isolate shares out
  // its budget: 16 databases of 9 MiB, loaded and scanned, took 193 MiB of wasm memory.
  const own = await startEngine();
  try {
    const names = Array.from({ length: 16 }, (_, i) => `big_${i}`);
    const fill =
      "WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?2) INSERT INTO t SELECT i, hex(randomblob(80)) FROM s";
    for (const db of names) {
      assert.equal((await query(own.url, db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")).status, 200);
      for (let from = 0; from < 56_000; from += 14_000) {
        const r = await query(own.url, db, fill, [from, from + 14_000]);
        assert.equal(r.status, 200, JSON.stringify(r.body));
      }
    }
    for (const db of names) {
      const r = await query(own.url, db, "SELECT count(*), sum(length(v)) FROM t");
      assert.deepEqual(r.body.rows, [[56_000, 8_960_000]], JSON.stringify(r.body).slice(0, 300));
    }
    const stats = await (await fetch(`${own.url}/v1/db/${names[0]}/stats`)).json();
    assert.equal(stats.parsed_page_cache_pages, 512, "each of 16 open databases has 8,192 / 16 parsed pages");
    const mib = stats.wasm_memory_bytes / 1048576;
    assert.ok(mib < 112, `wasm memory with 16 databases of 9 MiB loaded and scanned: ${mib.toFixed(1)} MiB`);
  } finally {
    await own.stop();
  }
});

test("memory: a request that writes more than WRITE_SIZE is refused at once, changes nothing, and the isolate keeps serving", { timeout: 180_000 }, async () => {
  // One statement can write far more than its request's body: turso kept every new page of
  // a transaction in memory until the commit, so 150 rows of 1 MB each killed the isolate
  // (the runtime closed the connection) and 14 took its wasm memory past 120 MiB.
  const own = await startEngine();
  const fill = (rows) =>
    `WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT ${rows}) INSERT INTO t SELECT randomblob(1000000) FROM r`;
  try {
    assert.equal((await query(own.url, "w", "CREATE TABLE t (b BLOB)")).status, 200);
    assert.equal((await query(own.url, "w", fill(6))).status, 200, "6 MB in one request is inside the limit");
    // The commit holds its pages in turso's cache, in the WAL and in the log record: about
    // 4× what it writes (each R2 attempt copied the record once more, which made it 5×).
    const committed = (await (await fetch(`${own.url}/v1/db/w/stats`)).json()).wasm_memory_bytes / 1048576;
    assert.ok(committed < 28, `wasm memory after a 6 MB commit in a fresh isolate: ${committed.toFixed(1)} MiB`);
    for (const rows of [9, 150, 1000]) {
      const started = Date.now();
      expectError(await query(own.url, "w", fill(rows)), 400, "LIMIT_EXCEEDED", /WRITE_SIZE/);
      console.log(`${rows} MB refused after ${Date.now() - started} ms`);
    }
    // All or nothing inside a batch, and over Hrana.
    expectError(await batch(own.url, "w", [{ sql: "INSERT INTO t VALUES (x'01')" }, { sql: fill(20) }]), 400, "LIMIT_EXCEEDED", /WRITE_SIZE/);
    const h = await post(`${own.url}/v1/db/w/v2/pipeline`, { requests: [{ type: "execute", stmt: { sql: fill(20) } }, { type: "close" }] });
    assert.equal(h.status, 400, JSON.stringify(h.body).slice(0, 300));
    const r = await query(own.url, "w", "SELECT count(*), sum(length(b)) FROM t");
    assert.deepEqual(r.body.rows, [[6, 6_000_000]]);
    const { wasm_memory_bytes } = await (await fetch(`${own.url}/v1/db/w/stats`)).json();
    const mib = wasm_memory_bytes / 1048576;
    assert.ok(mib < 64, `wasm memory after the refused writes: ${mib.toFixed(1)} MiB`);
    assert.equal((await query(own.url, "w", fill(6))).status, 200, "writes go on");
  } finally {
    await own.stop();
  }
});

test("memory: a bulk load faster than checkpoints may be written holds at most UNFOLDED_LOG of log", { timeout: 180_000 }, async () => {
  // Checkpoints are paced (the manifest takes about one write a second), and the log since
  // the last one lives in the isolate's memory: commits of 3 MB, five a second, held 15 MB
  // more every second, and folding it takes about twice as much again.
  const own = await startEngine();
  const fill = `WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 3) INSERT INTO t SELECT randomblob(1000000) FROM r`;
  try {
    assert.equal((await query(own.url, "bulk", "CREATE TABLE t (b BLOB)")).status, 200);
    let folds = 0;
    for (let i = 0; i < 12; i++) {
      assert.equal((await query(own.url, "bulk", fill)).status, 200);
      const s = await (await fetch(`${own.url}/v1/db/bulk/stats`)).json();
      assert.ok(s.unfolded_log_bytes < 8 << 20, `after commit ${i + 1}: ${s.unfolded_log_bytes} bytes of log unfolded`);
      if (s.unfolded_log_bytes === 0) folds++;
    }
    assert.ok(folds >= 3, `the log was folded ${folds} times in 12 commits of 3 MB`);
    const r = await query(own.url, "bulk", "SELECT count(*) FROM t");
    assert.deepEqual(r.body.rows, [[36]]);
  } finally {
    await own.stop();
  }
});
