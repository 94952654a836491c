// Reliability inside workerd: R2 faults from a seeded schedule under concurrent writers on
// two isolates, the runtime killed mid-commit again and again, herds of cold first requests,
// and requests at the limits that matter.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Miniflare } from "miniflare";
import { engineWorker, tempDir, removeDir, startEngine, post } from "./harness.mjs";

async function call(mf, worker, path, body) {
  const w = await mf.getWorker(worker);
  const res = await w.fetch(`http://localhost${path}`, {
    method: body === undefined ? "GET" : "POST",
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

/** Classifies a write's answer by what it promises about the commit. */
function fate(r) {
  if (r.status === 200) return "acked";
  const code = r.body?.error?.code;
  if (code === "COMMIT_OUTCOME_UNKNOWN") return "unknown";
  assert.ok(
    ["STORAGE_UNAVAILABLE", "WRITE_CONFLICT", "SQL_ERROR"].includes(code),
    `an answer that says neither success nor "nothing committed": ${JSON.stringify(r.body)}`,
  );
  return "not-committed";
}

function checkOutcome(ids, outcomes) {
  const present = new Set(ids);
  assert.equal(present.size, ids.length, "no write is there twice");
  let acked = 0;
  let unknown = 0;
  let failed = 0;
  for (const [id, f] of outcomes) {
    if (f === "acked") {
      acked++;
      assert.ok(present.has(id), `acknowledged write ${id} is lost`);
    } else if (f === "not-committed") {
      failed++;
      assert.ok(!present.has(id), `write ${id} is there although its answer said nothing was committed`);
    } else {
      unknown++; // resolved by reading: either way is allowed, and this read says which
    }
  }
  return { acked, unknown, failed };
}

test("R2 faults inside workerd: concurrent writes from two isolates, every answer kept its promise", { timeout: 300_000 }, async () => {
  const persist = tempDir();
  try {
    const faulty = (name, seed) =>
      engineWorker(name, {
        bindings: {
          TWILL_EMULATE_R2_FAULTS: JSON.stringify({ seed, error_before: 0.06, error_after: 0.06, slow: 0.1, slow_ms: 40 }),
          TWILL_CHECKPOINT_RECORDS: "6",
          TWILL_COMMIT_BUDGET_MS: "3000",
        },
      });
    const setup = new Miniflare({ r2Persist: persist, workers: [engineWorker("clean")] });
    assert.equal((await call(setup, "clean", "/v1/db/faults/query", { sql: "CREATE TABLE w (id INTEGER PRIMARY KEY, who TEXT)" })).status, 200);
    await setup.dispose();

    const mf = new Miniflare({ r2Persist: persist, workers: [faulty("a", 1), faulty("b", 2)] });
    const outcomes = new Map();
    let next = 0;
    for (let round = 0; round < 12; round++) {
      const writes = [];
      for (const w of ["a", "b"]) {
        for (let i = 0; i < 6; i++) {
          const id = ++next;
          writes.push(
            call(mf, w, "/v1/db/faults/batch", {
              statements: [{ sql: "INSERT INTO w VALUES (?, ?)", params: [id, w] }, { sql: "SELECT count(*) FROM w" }],
            }).then((r) => outcomes.set(id, fate(r))),
          );
        }
      }
      await Promise.all(writes);
    }
    await mf.dispose();

    // Faults off: the truth, from a fresh runtime.
    const check = new Miniflare({ r2Persist: persist, workers: [engineWorker("clean")] });
    const r = await call(check, "clean", "/v1/db/faults/query", { sql: "SELECT id FROM w ORDER BY id" });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const counts = checkOutcome(r.body.rows.map((row) => row[0]), outcomes);
    console.log(`R2 faults: ${next} writes: ${counts.acked} acknowledged, ${counts.unknown} outcome unknown, ${counts.failed} failed cleanly`);
    assert.ok(counts.acked > next / 4, "most writes get through the faults");
    assert.ok(counts.unknown + counts.failed > 0, "the schedule did inject faults");
    await check.dispose();
  } finally {
    removeDir(persist);
  }
});

test("the runtime killed mid-commit, eight times: nothing acknowledged is lost and the database opens", { timeout: 300_000 }, async () => {
  const persist = tempDir();
  try {
    const outcomes = new Map();
    let next = 0;
    for (let life = 0; life < 8; life++) {
      const mf = new Miniflare({
        r2Persist: persist,
        workers: [engineWorker("e", { bindings: { TWILL_EMULATE_R2_LATENCY_MS: "5", TWILL_CHECKPOINT_RECORDS: "4" } })],
      });
      await mf.ready;
      if (life === 0) await call(mf, "e", "/v1/db/deaths/query", { sql: "CREATE TABLE w (id INTEGER PRIMARY KEY)" });
      const inflight = [];
      let answered = 0;
      for (let i = 0; i < 16; i++) {
        const id = ++next;
        outcomes.set(id, "unknown");
        // Spread out, so that commits go in several groups and the kill lands among them.
        inflight.push(
          new Promise((r) => setTimeout(r, i * 4))
            .then(() => call(mf, "e", "/v1/db/deaths/query", { sql: "INSERT INTO w VALUES (?)", params: [id] }))
            .then((r) => {
              answered++;
              outcomes.set(id, r.status === 200 ? "acked" : fate(r));
            })
            .catch(() => {}), // the runtime died under it: outcome unknown
        );
      }
      // Kill it while writes are in flight: after the first 1..8 answers (varying by life),
      // so that some writes were acknowledged and others are cut off mid-commit.
      const deadline = Date.now() + 5_000;
      while (answered < 1 + (life % 8) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
      await mf.dispose();
      await Promise.allSettled(inflight);
    }
    const check = new Miniflare({ r2Persist: persist, workers: [engineWorker("clean")] });
    const r = await call(check, "clean", "/v1/db/deaths/query", { sql: "SELECT id FROM w ORDER BY id" });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const counts = checkOutcome(r.body.rows.map((row) => row[0]), outcomes);
    console.log(`isolate death: 8 kills, ${next} writes: ${counts.acked} acknowledged (all there), ${counts.unknown} cut off`);
    assert.ok(counts.acked > 0, "some writes were acknowledged before the kills");
    assert.ok(counts.unknown > 0, "some writes were cut off by the kills");
    await check.dispose();
  } finally {
    removeDir(persist);
  }
});

test("a herd of 64 cold first requests: one open per isolate, bounded R2 reads, every answer right", { timeout: 120_000 }, async () => {
  const persist = tempDir();
  try {
    const setup = new Miniflare({ r2Persist: persist, workers: [engineWorker("w", { bindings: { TWILL_CHECKPOINT_RECORDS: "4" } })] });
    await call(setup, "w", "/v1/db/herd/batch", {
      statements: [
        { sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)" },
        { sql: "INSERT INTO t SELECT value, 'v' || value FROM (WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 2000) SELECT value FROM s)" },
      ],
    });
    for (let i = 0; i < 6; i++) await call(setup, "w", "/v1/db/herd/query", { sql: "UPDATE t SET v = v || 'x' WHERE id = ?", params: [i + 1] });
    await setup.dispose();

    for (const isolates of [1, 4]) {
      const names = Array.from({ length: isolates }, (_, i) => `h${i}`);
      const mf = new Miniflare({ r2Persist: persist, workers: names.map((n) => engineWorker(n)) });
      await mf.ready;
      const herd = [];
      for (let i = 0; i < 64; i++) {
        const id = 1 + ((i * 37) % 2000);
        herd.push(call(mf, names[i % isolates], "/v1/db/herd/query", { sql: "SELECT v FROM t WHERE id = ?", params: [id] }).then((r) => ({ r, id })));
      }
      for (const { r, id } of await Promise.all(herd)) {
        assert.equal(r.status, 200, JSON.stringify(r.body));
        assert.equal(r.body.rows[0][0].replace(/x$/, ""), `v${id}`);
      }
      let reads = 0;
      for (const n of names) {
        const s = await call(mf, n, "/v1/db/herd/stats");
        assert.equal(s.body.opens, 1, `isolate ${n} opened the database once`);
        reads += s.body.r2.reads;
      }
      console.log(`herd: 64 cold requests on ${isolates} isolate(s): ${isolates} open(s), ${reads} R2 reads in all`);
      assert.ok(reads <= isolates * 40, `R2 reads stay bounded (${reads})`);
      await mf.dispose();
    }
  } finally {
    removeDir(persist);
  }
});

test("names and bodies at every limit", async () => {
  const engine = await startEngine();
  try {
    const base = engine.url;
    const longest = "a".repeat(63);
    assert.equal((await post(`${base}/v1/db/${longest}/query`, { sql: "SELECT 1" })).status, 200);
    const tooLong = await post(`${base}/v1/db/${longest}a/query`, { sql: "SELECT 1" });
    assert.equal(tooLong.body.error.code, "INVALID_DATABASE_NAME");
    for (const name of ["v2", "v3", "query", "0"]) {
      assert.equal((await post(`${base}/v1/db/${name}/query`, { sql: "SELECT 1" })).status, 200, name);
    }
    // A body of exactly BODY_SIZE is read; one byte more is refused.
    const limit = 8 << 20;
    const shell = JSON.stringify({ sql: "SELECT length(?)", params: [""] });
    const exact = shell.replace('[""]', `["${"x".repeat(limit - shell.length)}"]`);
    assert.equal(exact.length, limit);
    const ok = await post(`${base}/v1/db/limits-edge/query`, exact);
    assert.equal(ok.status, 200, JSON.stringify(ok.body).slice(0, 300));
    assert.deepEqual(ok.body.rows, [[limit - shell.length]]);
    const over = await post(`${base}/v1/db/limits-edge/query`, exact.replace('"x', '"xx'));
    assert.equal(over.status, 413);
  } finally {
    await engine.stop();
  }
});
