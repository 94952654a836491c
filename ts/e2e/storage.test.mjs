// The storage engine in workerd: two isolates sharing one database through R2, a database
// larger than the isolate's cache, and restarts after checkpoints.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Miniflare } from "miniflare";
import { engineWorker, tempDir, removeDir } from "./harness.mjs";

/** fetch-like helper for one named worker of a Miniflare instance. */
function client(mf, name) {
  const call = async (path, init) => {
    const worker = await mf.getWorker(name);
    const res = await worker.fetch(`http://localhost${path}`, init);
    return { status: res.status, body: await res.json() };
  };
  return {
    query: (db, sql, params) =>
      call(`/v1/db/${db}/query`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sql, params }) }),
    batch: (db, statements) =>
      call(`/v1/db/${db}/batch`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ statements }) }),
    stats: (db) => call(`/v1/db/${db}/stats`, { method: "GET" }),
  };
}

async function ok(p) {
  const r = await p;
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

test("two isolates on one bucket: concurrent writers, exact final state, read-your-writes across isolates", async () => {
  const persist = tempDir();
  const mf = new Miniflare({ r2Persist: persist, workers: [engineWorker("a"), engineWorker("b")] });
  try {
    const a = client(mf, "a");
    const b = client(mf, "b");
    await ok(a.batch("shared", [
      { sql: "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)" },
      { sql: "INSERT INTO counter VALUES (1, 0)" },
      { sql: "CREATE TABLE ev (id INTEGER PRIMARY KEY, who TEXT NOT NULL)" },
    ]));
    // Each isolate sees the other's acknowledged writes on its very next request.
    await ok(a.query("shared", "INSERT INTO ev (who) VALUES ('seed-a')"));
    assert.deepEqual((await ok(b.query("shared", "SELECT count(*) FROM ev"))).rows, [[1]]);
    await ok(b.query("shared", "INSERT INTO ev (who) VALUES ('seed-b')"));
    assert.deepEqual((await ok(a.query("shared", "SELECT count(*) FROM ev"))).rows, [[2]]);

    let acked = 0;
    const rounds = 6;
    for (let round = 0; round < rounds; round++) {
      const requests = [];
      for (let i = 0; i < 8; i++) {
        for (const [who, c] of [["a", a], ["b", b]]) {
          requests.push(
            c.batch("shared", [
              { sql: "UPDATE counter SET n = n + 1 WHERE id = 1" },
              { sql: "INSERT INTO ev (who) VALUES (?)", params: [who] },
            ]),
          );
        }
      }
      for (const r of await Promise.all(requests)) {
        if (r.status === 200) acked++;
        else assert.equal(r.body.error.code, "WRITE_CONFLICT", JSON.stringify(r.body));
      }
    }
    assert.ok(acked >= rounds * 8, `most writes commit (${acked} of ${rounds * 16})`);
    for (const c of [a, b]) {
      const r = await ok(c.batch("shared", [
        { sql: "SELECT n FROM counter WHERE id = 1" },
        { sql: "SELECT count(*) FROM ev WHERE who IN ('a', 'b')" },
      ]));
      assert.deepEqual(r.results[0].rows, [[acked]], "counter equals exactly what was acknowledged");
      assert.deepEqual(r.results[1].rows, [[acked]], "one row per acknowledged write");
    }
  } finally {
    await mf.dispose();
    removeDir(persist);
  }
});

test("group commit: 16 concurrent writers in one isolate share R2 writes", async () => {
  const persist = tempDir();
  const mf = new Miniflare({ r2Persist: persist, workers: [engineWorker("solo")] });
  try {
    const c = client(mf, "solo");
    await ok(c.query("gc", "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"));
    const before = (await ok(c.stats("gc"))).r2.writes;
    // Four waves of 16 concurrent single-row inserts.
    const commits = 64;
    for (let wave = 0; wave < 4; wave++) {
      const results = await Promise.all(
        Array.from({ length: 16 }, (_, i) => c.query("gc", "INSERT INTO t (v) VALUES (?)", [wave * 16 + i])),
      );
      for (const r of results) assert.equal(r.status, 200, JSON.stringify(r.body));
    }
    const writes = (await ok(c.stats("gc"))).r2.writes - before;
    console.log(`group commit: ${commits} commits in waves of 16 concurrent took ${writes} R2 writes (${(writes / commits).toFixed(3)} per commit)`);
    assert.ok(writes < commits / 2, `grouping must share PUTs: ${writes} writes for ${commits} commits`);
    assert.deepEqual((await ok(c.query("gc", "SELECT count(*), sum(v) FROM t"))).rows, [[commits, (commits * (commits - 1)) / 2]]);
  } finally {
    await mf.dispose();
    removeDir(persist);
  }
});

test("a database 4x the cache, served from a cold isolate after checkpoints and a restart", async () => {
  const persist = tempDir();
  const budget = 1 << 20;
  const settings = {
    // Checkpoints after every commit of this load (no 1 s interval between them), so that the
    // cold isolate reads pages from chunks rather than replaying a log tail.
    bindings: { TWILL_CACHE_BYTES: String(budget), TWILL_CHECKPOINT_RECORDS: "8", TWILL_CHECKPOINT_BYTES: "262144", TWILL_CHECKPOINT_INTERVAL_MS: "0" },
  };
  let mf = new Miniflare({ r2Persist: persist, workers: [engineWorker("big", settings)] });
  try {
    let c = client(mf, "big");
    await ok(c.query("large", "CREATE TABLE big (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)"));
    const rows = 5000;
    for (let start = 0; start < rows; start += 250) {
      const params = [];
      const values = [];
      for (let i = start; i < start + 250; i++) {
        values.push("(?, randomblob(1000))");
        params.push(i);
      }
      await ok(c.query("large", `INSERT INTO big (id, pad) VALUES ${values.join(", ")}`, params));
    }
    const size = (await ok(c.query("large", "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"))).rows[0][0];
    assert.ok(size >= 4 * budget, `database ${size} bytes must be at least 4x the ${budget}-byte cache`);
    const warm = await ok(c.stats("large"));
    assert.ok(warm.checkpoint_seq > 0, "checkpoints happened");
    assert.ok(warm.cache.bytes <= budget, `cache within budget: ${JSON.stringify(warm.cache)}`);

    // Restart: a cold isolate reads the newest manifest and fetches only what it needs.
    await mf.dispose();
    mf = new Miniflare({ r2Persist: persist, workers: [engineWorker("big", settings)] });
    c = client(mf, "big");
    const point = await ok(c.query("large", "SELECT id, length(pad) FROM big WHERE id = ?", [4321]));
    assert.deepEqual(point.rows, [[4321, 1000]]);
    console.log(
      `cold point query on ${(size / 1048576).toFixed(1)} MiB: ${point.meta.r2_reads} R2 reads, ${point.meta.r2_bytes_read} bytes`,
    );
    assert.ok(point.meta.r2_bytes_read < size / 4, "a point query does not download the database");
    const scan = await ok(c.query("large", "SELECT count(*), sum(length(pad)) FROM big"));
    assert.deepEqual(scan.rows, [[rows, rows * 1000]]);
    const cold = await ok(c.stats("large"));
    assert.ok(cold.cache.bytes <= budget, `cache within budget after a full scan: ${JSON.stringify(cold.cache)}`);
    assert.ok(cold.cache.evictions > 0);
    assert.ok(cold.checkpoint_seq > 0);
    // Writes keep working on cold pages, and survive another restart.
    await ok(c.query("large", "DELETE FROM big WHERE id % 10 = 0"));
    await mf.dispose();
    mf = new Miniflare({ r2Persist: persist, workers: [engineWorker("big", settings)] });
    c = client(mf, "big");
    assert.deepEqual((await ok(c.query("large", "SELECT count(*) FROM big"))).rows, [[rows - rows / 10]]);
  } finally {
    await mf.dispose();
    removeDir(persist);
  }
});

test("a writer gone quiet folds a large log tail into a checkpoint; small tails wait for more commits", async () => {
  const persist = tempDir();
  let mf = new Miniflare({ r2Persist: persist, workers: [engineWorker("quiet")] });
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  try {
    let c = client(mf, "quiet");
    await ok(c.query("q", "CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)"));
    // About 400 KB of log: under the 1 MiB and 32-record checkpoint thresholds, over the
    // 256 KiB a cold reader should not have to replay.
    await ok(c.query("q", "WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 400) INSERT INTO t SELECT v, randomblob(1000) FROM s"));
    const busy = await ok(c.stats("q"));
    assert.ok(busy.applied_seq > busy.checkpoint_seq, `a tail right after the commit: ${JSON.stringify(busy)}`);
    await sleep(2500);
    const quiet = await ok(c.stats("q"));
    assert.equal(quiet.checkpoint_seq, quiet.applied_seq, "folded once the writer was quiet for 1 s");

    await ok(c.query("q", "INSERT INTO t VALUES (1000, x'00')"));
    await sleep(2500);
    const small = await ok(c.stats("q"));
    assert.equal(small.applied_seq, small.checkpoint_seq + 1, "one small record is left for the next commits to fold");

    // A cold isolate: the manifest carries the schema page and the table's root, so the point
    // query reads the manifest, the listing, the one small record and the leaf's page group.
    await mf.dispose();
    mf = new Miniflare({ r2Persist: persist, workers: [engineWorker("quiet")] });
    c = client(mf, "quiet");
    const point = await ok(c.query("q", "SELECT length(pad) FROM t WHERE id = ?", [350]));
    assert.deepEqual(point.rows, [[1000]]);
    assert.equal(point.meta.r2_reads, 4, `manifest, LIST, log record, leaf group: ${JSON.stringify(point.meta)}`);
  } finally {
    await mf.dispose();
    removeDir(persist);
  }
});
