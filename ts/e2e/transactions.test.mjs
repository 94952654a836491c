// Interactive transactions across requests and isolates, and sessions (bookmarks), in
// workerd: two isolates of the engine on one R2 bucket, and clients whose every request
// goes to the other isolate than the one before (no sticky routing).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Miniflare } from "miniflare";
import { createClient } from "@libsql/client";
import { drizzle } from "drizzle-orm/libsql";
import { sqliteTable, integer } from "drizzle-orm/sqlite-core";
import { eq, sql } from "drizzle-orm";
import { engineWorker, tempDir, removeDir } from "./harness.mjs";

let mf, persist;
const served = { a: 0, b: 0 };

before(async () => {
  persist = tempDir();
  const extra = { bindings: { TWILL_TX_IDLE_MS: "3000" } };
  mf = new Miniflare({ r2Persist: persist, workers: [engineWorker("a", extra), engineWorker("b", extra)] });
  await mf.ready;
});

after(async () => {
  await mf?.dispose();
  removeDir(persist);
});

/** A fetch that sends each request to the other isolate than the previous one. */
function alternating() {
  let n = 0;
  return async (input, init) => {
    const req = input instanceof Request ? input : new Request(input, init);
    const name = n++ % 2 === 0 ? "a" : "b";
    served[name]++;
    const worker = await mf.getWorker(name);
    const body = req.method === "GET" || req.method === "HEAD" ? undefined : await req.arrayBuffer();
    const res = await worker.fetch(req.url, { method: req.method, headers: req.headers, body });
    return new Response(await res.arrayBuffer(), { status: res.status, headers: res.headers });
  };
}

const client = (db, intMode = "bigint") => createClient({ url: `http://localhost/v1/db/${db}/`, intMode, fetch: alternating() });

async function pipeline(name, db, body, headers = {}) {
  const worker = await mf.getWorker(name);
  const res = await worker.fetch(`http://localhost/v1/db/${db}/v3/pipeline`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

test("@libsql/client transaction(): commit, rollback, read mode, each request on another isolate", async () => {
  const c = client("tx-basic");
  await c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)");
  const before = { ...served };
  const tx = await c.transaction("write");
  await tx.execute({ sql: "INSERT INTO t (v) VALUES (?)", args: ["one"] });
  await tx.execute({ sql: "INSERT INTO t (v) VALUES (?)", args: ["two"] });
  const inside = await tx.execute("SELECT v FROM t ORDER BY id");
  assert.deepEqual(inside.rows.map((r) => r.v), ["one", "two"], "the transaction sees its own writes");
  const outside = await client("tx-basic").execute("SELECT count(*) AS n FROM t");
  assert.equal(outside.rows[0].n, 0n, "nobody else does");
  await tx.commit();
  assert.ok(served.a > before.a && served.b > before.b, "requests went to both isolates");
  assert.equal((await c.execute("SELECT count(*) AS n FROM t")).rows[0].n, 2n);

  const rb = await c.transaction("deferred");
  await rb.execute("INSERT INTO t (v) VALUES ('gone')");
  await rb.rollback();
  assert.equal((await c.execute("SELECT count(*) AS n FROM t")).rows[0].n, 2n);

  const ro = await c.transaction("read");
  assert.equal((await ro.execute("SELECT count(*) AS n FROM t")).rows[0].n, 2n);
  await assert.rejects(ro.execute("INSERT INTO t (v) VALUES ('no')"), /read-only/);
  await ro.rollback();
  c.close();
});

test("a transaction whose reads changed ends in a conflict; one that expired is over", async () => {
  const c = client("tx-conflict");
  await c.batch(["CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER)", "INSERT INTO acct VALUES (1, 100)"]);
  const tx = await c.transaction("write");
  const bal = (await tx.execute("SELECT bal FROM acct WHERE id = 1")).rows[0].bal;
  assert.equal(bal, 100n);
  await client("tx-conflict").execute("UPDATE acct SET bal = 50 WHERE id = 1");
  await assert.rejects(tx.execute("UPDATE acct SET bal = bal - 10 WHERE id = 1"), (e) => {
    assert.equal(e.code, "TRANSACTION_CONFLICT", e.message);
    return true;
  });
  await tx.rollback();
  assert.equal((await c.execute("SELECT bal FROM acct")).rows[0].bal, 50n);

  const idle = await c.transaction("write");
  await idle.execute("UPDATE acct SET bal = 0");
  await new Promise((r) => setTimeout(r, 3500));
  await assert.rejects(idle.commit(), /TRANSACTION_EXPIRED/);
  assert.equal((await c.execute("SELECT bal FROM acct")).rows[0].bal, 50n, "an expired transaction committed nothing");
  c.close();
});

test("Drizzle db.transaction() across isolates, rolled back by a throw and committed otherwise", async () => {
  const acct = sqliteTable("acct", { id: integer("id").primaryKey(), bal: integer("bal").notNull() });
  const db = drizzle(client("tx-drizzle", "number"));
  await db.run(sql`CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)`);
  await db.insert(acct).values([{ id: 1, bal: 100 }, { id: 2, bal: 0 }]);
  await db.transaction(async (tx) => {
    const [from] = await tx.select().from(acct).where(eq(acct.id, 1));
    await tx.update(acct).set({ bal: from.bal - 30 }).where(eq(acct.id, 1));
    await tx.update(acct).set({ bal: sql`${acct.bal} + 30` }).where(eq(acct.id, 2));
  });
  await assert.rejects(
    db.transaction(async (tx) => {
      await tx.update(acct).set({ bal: 0 }).where(eq(acct.id, 1));
      throw new Error("changed my mind");
    }),
    /changed my mind/,
  );
  const rows = await db.select().from(acct).orderBy(acct.id);
  assert.deepEqual(rows.map((r) => r.bal), [70, 30]);
});

test("concurrent transfers from several clients across isolates keep the total, each applied once", async () => {
  const setup = client("tx-bank");
  await setup.batch([
    "CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)",
    "CREATE TABLE transfer (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER)",
    "INSERT INTO acct VALUES (1, 1000), (2, 1000), (3, 1000), (4, 1000)",
  ]);
  let next = 1;
  const acked = [];
  let conflicts = 0;
  async function transfer(c) {
    const id = next++;
    const src = 1 + (id % 4);
    const dst = 1 + ((id + 1) % 4);
    const amount = 1 + (id % 17);
    for (let attempt = 0; attempt < 20; attempt++) {
      const tx = await c.transaction("write");
      try {
        const bal = (await tx.execute({ sql: "SELECT bal FROM acct WHERE id = ?", args: [src] })).rows[0].bal;
        await tx.execute({ sql: "UPDATE acct SET bal = ? WHERE id = ?", args: [bal - BigInt(amount), src] });
        await tx.execute({ sql: "UPDATE acct SET bal = bal + ? WHERE id = ?", args: [amount, dst] });
        await tx.execute({ sql: "INSERT INTO transfer VALUES (?, ?, ?, ?)", args: [id, src, dst, amount] });
        await tx.commit();
        acked.push(id);
        return;
      } catch (e) {
        if (!/TRANSACTION_CONFLICT|WRITE_CONFLICT/.test(String(e.code ?? e.message))) throw e;
        conflicts++;
        await tx.rollback().catch(() => {});
      }
    }
  }
  const clients = [client("tx-bank"), client("tx-bank"), client("tx-bank")];
  for (let round = 0; round < 6; round++) {
    await Promise.all(clients.map((c) => transfer(c)));
  }
  const total = (await setup.execute("SELECT sum(bal) AS s FROM acct")).rows[0].s;
  assert.equal(total, 4000n, "the total never changes");
  const ids = (await setup.execute("SELECT id FROM transfer ORDER BY id")).rows.map((r) => Number(r.id));
  assert.deepEqual(ids, [...acked].sort((x, y) => x - y), "every acknowledged transfer exactly once");
  assert.ok(acked.length >= 12, `${acked.length} transfers committed, ${conflicts} conflicts retried`);
  console.log(`bank: ${acked.length} transfers committed across two isolates, ${conflicts} conflicts retried`);
});

test("a forged or altered baton is refused", async () => {
  await pipeline("a", "tx-forge", { requests: [{ type: "execute", stmt: { sql: "CREATE TABLE t (x)" } }] });
  const open = await pipeline("a", "tx-forge", {
    requests: [{ type: "execute", stmt: { sql: "BEGIN" } }, { type: "execute", stmt: { sql: "INSERT INTO t VALUES (1)" } }],
  });
  const baton = open.body.baton;
  assert.match(baton, /^twb2\./);
  // Flip one character of the payload: the seal no longer matches.
  const i = 10;
  const altered = baton.slice(0, i) + (baton[i] === "A" ? "B" : "A") + baton.slice(i + 1);
  const r = await pipeline("b", "tx-forge", { baton: altered, requests: [{ type: "execute", stmt: { sql: "COMMIT" } }] });
  assert.equal(r.status, 400);
  assert.equal(r.body.code, "HRANA_INVALID_BATON");
  // A baton of another database is refused too.
  const other = await pipeline("b", "tx-forge-other", { baton, requests: [{ type: "execute", stmt: { sql: "COMMIT" } }] });
  assert.equal(other.body.code, "HRANA_INVALID_BATON");
  // The genuine one still commits, on the other isolate.
  const ok = await pipeline("b", "tx-forge", { baton, requests: [{ type: "execute", stmt: { sql: "COMMIT" } }, { type: "close" }] });
  assert.equal(ok.body.results[0].type, "ok", JSON.stringify(ok.body));
});

test("sessions: a bookmark read on another isolate sees the write, and costs no R2 read once held", async () => {
  const post = async (name, path, body, headers = {}) => {
    const worker = await mf.getWorker(name);
    const res = await worker.fetch(`http://localhost/v1/db/sess/${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: await res.json(), bookmark: res.headers.get("x-twill-bookmark") };
  };
  await post("a", "query", { sql: "CREATE TABLE s (x)" });
  // Isolate b opens the database now, then a writes.
  await post("b", "query", { sql: "SELECT count(*) FROM s" });
  const w = await post("a", "query", { sql: "INSERT INTO s VALUES (1)" });
  assert.equal(w.status, 200);
  assert.match(w.body.meta.bookmark, /^tw[0-9a-f]{16}$/);
  assert.equal(w.bookmark, w.body.meta.bookmark);
  const r = await post("b", "query", { sql: "SELECT count(*) FROM s" }, { "x-twill-bookmark": w.body.meta.bookmark });
  assert.deepEqual(r.body.rows, [[1]], "read-your-writes on another isolate");
  assert.ok(r.body.meta.bookmark >= w.body.meta.bookmark, "bookmarks sort in commit order");
  const again = await post("b", "query", { sql: "SELECT count(*) FROM s", bookmark: w.body.meta.bookmark });
  assert.deepEqual(again.body.rows, [[1]]);
  assert.equal(again.body.meta.r2_reads, 0, "the isolate already holds that commit: no R2 read");
  const strict = await post("b", "query", { sql: "SELECT count(*) FROM s" });
  assert.ok(strict.body.meta.r2_reads > 0, "without a bookmark, a read proves it is current");
  const bad = await post("b", "query", { sql: "SELECT 1" }, { "x-twill-bookmark": "yesterday" });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.code, "INVALID_BOOKMARK");
});
