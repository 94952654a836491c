// The plain JavaScript Workers TwillDB Edge is compared with, on the same schema and data,
// and the consumer that reaches TwillDB Edge through a service binding. Each answers
// /setup, /load?from&to, /point?id and /insert?id with JSON.

export const SCHEMA = [
  "CREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v TEXT NOT NULL)",
  "CREATE INDEX items_k ON items (k)",
];
export const POINT = "SELECT v FROM items WHERE id = ?";
export const INSERT = "INSERT INTO items (id, k, v) VALUES (?, ?, ?)";
// Rows [?1, ?2); k is a permutation of the ids (as in the native overhead benchmark).
export const LOAD =
  "WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?2) " +
  "INSERT INTO items SELECT i, (i * 7) % 100000, 'value-' || i FROM s";

const common = `
const SCHEMA = ${JSON.stringify(SCHEMA)};
const POINT = ${JSON.stringify(POINT)};
const INSERT = ${JSON.stringify(INSERT)};
const LOAD = ${JSON.stringify(LOAD)};
const json = (v, status = 200) => new Response(JSON.stringify(v), { status, headers: { "content-type": "application/json" } });
const args = (req) => { const u = new URL(req.url); return { path: u.pathname, id: Number(u.searchParams.get("id")), from: Number(u.searchParams.get("from")), to: Number(u.searchParams.get("to")) }; };
`;

/** A Worker over miniflare's local D1 binding `D1`. */
export const d1Worker = `${common}
export default {
  async fetch(req, env) {
    const a = args(req);
    switch (a.path) {
      case "/setup": for (const s of SCHEMA) await env.D1.prepare(s).run(); return json({ ok: true });
      case "/load": await env.D1.prepare(LOAD).bind(a.from, a.to).run(); return json({ ok: true });
      case "/point": return json({ row: await env.D1.prepare(POINT).bind(a.id).first() });
      case "/insert": return json({ changes: (await env.D1.prepare(INSERT).bind(a.id, a.id, "new-" + a.id).run()).meta.changes });
    }
    return json({ error: "no such route" }, 404);
  },
};`;

/** A Worker over one Durable Object with SQLite storage (binding `BENCH`, RPC to the object). */
export const doWorker = `${common}
import { DurableObject } from "cloudflare:workers";
export class BenchDO extends DurableObject {
  setup() { for (const s of SCHEMA) this.ctx.storage.sql.exec(s); return true; }
  load(from, to) { this.ctx.storage.sql.exec(LOAD, from, to); return true; }
  point(id) { return this.ctx.storage.sql.exec(POINT, id).toArray()[0] ?? null; }
  insert(id) { return this.ctx.storage.sql.exec(INSERT, id, id, "new-" + id).rowsWritten; }
}
export default {
  async fetch(req, env) {
    const a = args(req);
    const stub = env.BENCH.get(env.BENCH.idFromName("bench"));
    switch (a.path) {
      case "/setup": return json({ ok: await stub.setup() });
      case "/load": return json({ ok: await stub.load(a.from, a.to) });
      case "/point": return json({ row: await stub.point(a.id) });
      case "/insert": return json({ changes: await stub.insert(a.id) });
    }
    return json({ error: "no such route" }, 404);
  },
};`;

/** A Worker calling TwillDB Edge through the service binding `TWILL` (RPC methods). */
export const bindingWorker = `${common}
const answer = (r) => (r && r.error ? json(r, 500) : json(r));
export default {
  async fetch(req, env) {
    const a = args(req);
    switch (a.path) {
      case "/setup": return answer(await env.TWILL.batch("bench", SCHEMA.map((sql) => ({ sql }))));
      case "/load": return answer(await env.TWILL.query("bench", LOAD, [a.from, a.to]));
      case "/point": { const r = await env.TWILL.query("bench", POINT, [a.id]); return r.error ? json(r, 500) : json({ row: r.rows[0] ?? null }); }
      case "/insert": { const r = await env.TWILL.query("bench", INSERT, [a.id, a.id, "new-" + a.id]); return r.error ? json(r, 500) : json({ changes: r.rows_affected }); }
    }
    return json({ error: "no such route" }, 404);
  },
};`;

/** The cold-start anchor: a Worker that does nothing. */
export const helloWorker = `export default { fetch() { return new Response(JSON.stringify({ ok: true }), { headers: { "content-type": "application/json" } }); } };`;
