// Fuzzing the HTTP surface (v1 JSON API, exec, Hrana pipelines) with fast-check: malformed
// JSON, wrong types, huge and deeply nested values, invalid UTF-8, random SQL and random
// Hrana requests. Every answer must be well-formed JSON (a result or an error with a code),
// the isolate must keep serving, and failed requests must leave the database unchanged.
// TWILL_FUZZ_RUNS sets the number of cases (default 10,000).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { startEngine, query } from "./harness.mjs";

const RUNS = Number(process.env.TWILL_FUZZ_RUNS ?? 10_000);
const DB = "fuzz";
let engine;

before(async () => {
  engine = await startEngine();
  await query(engine.url, DB, "CREATE TABLE keep(id INTEGER PRIMARY KEY, v TEXT)");
  for (let i = 1; i <= 5; i++) await query(engine.url, DB, "INSERT INTO keep(v) VALUES (?)", [`row ${i}`]);
  await query(engine.url, DB, "CREATE TABLE scratch(a, b)");
});
after(async () => engine?.stop());

const keepDigest = async () =>
  (await query(engine.url, DB, "SELECT count(*), group_concat(id || ':' || v, ',') FROM keep")).body.rows[0];

const ALLOWED = new Set([200, 400, 401, 403, 404, 405, 409, 413]);

async function send(path, body, contentType = "application/json") {
  const res = await fetch(`${engine.url}${path}`, { method: "POST", headers: { "content-type": contentType }, body });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    assert.fail(`${path}: non-JSON answer ${res.status}: ${text.slice(0, 200)}`);
  }
  assert.ok(ALLOWED.has(res.status), `${path}: status ${res.status}: ${text.slice(0, 300)}`);
  if (res.status !== 200) {
    const code = json.error?.code ?? json.code;
    assert.equal(typeof code, "string", `error without a code: ${text.slice(0, 300)}`);
    assert.match(code, /^[A-Z_]+$/);
  }
  return { status: res.status, json };
}

// SQL assembled from fragments: mostly nonsense, sometimes valid, never aimed at `keep`
// unless it is certain to fail.
const sqlWord = fc.constantFrom(
  "SELECT", "INSERT INTO scratch VALUES (?, ?)", "FROM", "scratch", "WHERE", "1", "?", ":a", "'text'", "x'00ff'",
  "(", ")", ",", ";", "--", "/*", "*/", "NULL", "ORDER BY", "LIMIT", "UNION", "WITH RECURSIVE", "BEGIN", "COMMIT",
  "ATTACH", "PRAGMA", "VACUUM", "DROP TABLE scratch", "DELETE FROM scratch", "UPDATE scratch SET a = 1", "sqlite_master", "randomblob(10)", "9223372036854775807",
  "-9223372036854775809", "1e999", "zeroblob(100)", "json('[1')", "CREATE TABLE", "\u0000", "☃", "\"",
);
const randomSql = fc.oneof(
  fc.array(sqlWord, { minLength: 0, maxLength: 12 }).map((w) => w.join(" ")),
  fc.string({ maxLength: 60 }),
  fc.constantFrom("SELECT 1", "SELECT * FROM scratch", "INSERT INTO scratch VALUES (1, 2)", "SELECT ?", "SELECT :a"),
);
const wireValue = fc.oneof(
  fc.constant(null), fc.boolean(), fc.integer(), fc.double(), fc.string({ maxLength: 30 }),
  fc.bigInt().map((b) => ({ int: b.toString() })), fc.string({ maxLength: 12 }).map((s) => ({ base64: s })),
  fc.constantFrom({ real: "Infinity" }, { real: "nope" }, { int: "1", base64: "" }, [1, 2], {}),
  fc.jsonValue({ maxDepth: 3 }),
);
const params = fc.oneof(fc.constant(undefined), fc.array(wireValue, { maxLength: 4 }), fc.dictionary(fc.constantFrom("a", ":a", "b", "?1"), wireValue), wireValue);
const v1Statement = fc.record({ sql: fc.oneof(randomSql, fc.jsonValue({ maxDepth: 2 })), params }, { requiredKeys: [] });

// A statement certain to fail (it does not parse), placed after a write to `keep`.
const failing = fc.string({ maxLength: 20 }).map((s) => `SELEC ${s}`);

const hValue = fc.oneof(
  fc.constant({ type: "null" }),
  fc.bigInt({ min: -(2n ** 64n), max: 2n ** 64n }).map((b) => ({ type: "integer", value: b.toString() })),
  fc.double({ noNaN: true, noDefaultInfinity: true }).map((d) => ({ type: "float", value: d })),
  fc.string({ maxLength: 20 }).map((s) => ({ type: "text", value: s })),
  fc.string({ maxLength: 12 }).map((s) => ({ type: "blob", base64: s })),
  fc.jsonValue({ maxDepth: 2 }),
);
const hStmt = fc.record(
  { sql: randomSql, sql_id: fc.integer({ min: -2, max: 5 }), args: fc.array(hValue, { maxLength: 3 }),
    named_args: fc.array(fc.record({ name: fc.constantFrom(":a", "a", "$b"), value: hValue }), { maxLength: 2 }),
    want_rows: fc.boolean() },
  { requiredKeys: [] },
);
const hCond = fc.letrec((tie) => ({
  cond: fc.oneof(
    { depthSize: "small" },
    fc.record({ type: fc.constantFrom("ok", "error"), step: fc.integer({ min: -1, max: 6 }) }),
    fc.constant({ type: "is_autocommit" }),
    fc.record({ type: fc.constant("not"), cond: tie("cond") }),
    fc.record({ type: fc.constantFrom("and", "or"), conds: fc.array(tie("cond"), { maxLength: 3 }) }),
  ),
})).cond;
const hRequest = fc.oneof(
  fc.record({ type: fc.constant("execute"), stmt: hStmt }),
  fc.record({ type: fc.constant("batch"), batch: fc.record({ steps: fc.array(fc.record({ condition: fc.option(hCond), stmt: hStmt }), { maxLength: 5 }) }) }),
  fc.record({ type: fc.constant("sequence"), sql: randomSql }),
  fc.record({ type: fc.constant("describe"), sql: randomSql }),
  fc.record({ type: fc.constant("store_sql"), sql_id: fc.integer({ min: 0, max: 5 }), sql: randomSql }),
  fc.record({ type: fc.constant("close_sql"), sql_id: fc.integer({ min: 0, max: 5 }) }),
  fc.constantFrom({ type: "close" }, { type: "get_autocommit" }, { type: "bogus" }, {}),
);
const pipeline = fc.record({
  baton: fc.option(fc.oneof(fc.string({ maxLength: 20 }), fc.constant("twb1.e30"))),
  requests: fc.array(hRequest, { maxLength: 6 }),
});

const bytes = (s) => new TextEncoder().encode(s);
const invalidUtf8 = fc.uint8Array({ maxLength: 64 }).map((b) => new Uint8Array([0x7b, 0x22, 0x73, 0x71, 0x6c, 0x22, 0x3a, 0x22, 0xc3, 0x28, ...b]));

/** One fuzz case: which endpoint, and the body bytes. */
const fuzzCase = fc.oneof(
  fc.record({ path: fc.constantFrom("/v1/db/fuzz/query"), body: v1Statement.map((s) => bytes(JSON.stringify(s))) }),
  fc.record({ path: fc.constant("/v1/db/fuzz/batch"), body: fc.record({ statements: fc.array(v1Statement, { maxLength: 4 }) }).map((b) => bytes(JSON.stringify(b))) }),
  fc.record({ path: fc.constant("/v1/db/fuzz/exec"), body: fc.record({ sql: randomSql }).map((b) => bytes(JSON.stringify(b))) }),
  fc.record({ path: fc.constantFrom("/v1/db/fuzz/v2/pipeline", "/v1/db/fuzz/v3/pipeline"), body: pipeline.map((p) => bytes(JSON.stringify(p))) }),
  fc.record({
    path: fc.constantFrom("/v1/db/fuzz/query", "/v1/db/fuzz/batch", "/v1/db/fuzz/exec", "/v1/db/fuzz/v2/pipeline", "/v1/db/Fuzz!/query", "/v1/db/fuzz/nope"),
    body: fc.oneof(
      fc.string({ maxLength: 80 }).map(bytes),
      fc.uint8Array({ maxLength: 80 }),
      invalidUtf8,
      fc.jsonValue({ maxDepth: 4 }).map((j) => bytes(JSON.stringify(j))),
    ),
  }),
  // Writes to `keep` that must roll back: a batch and a Hrana batch with a failing step.
  fc.record({ path: fc.constant("/v1/db/fuzz/batch"), body: failing.map((bad) => bytes(JSON.stringify({ statements: [{ sql: "DELETE FROM keep" }, { sql: bad }] }))) }),
  fc.record({
    path: fc.constant("/v1/db/fuzz/v2/pipeline"),
    body: failing.map((bad) => bytes(JSON.stringify({ requests: [{ type: "batch", batch: { steps: [
      { stmt: { sql: "BEGIN" } },
      { condition: { type: "ok", step: 0 }, stmt: { sql: "UPDATE keep SET v = 'changed'" } },
      { condition: { type: "ok", step: 1 }, stmt: { sql: bad } },
      { condition: { type: "ok", step: 2 }, stmt: { sql: "COMMIT" } },
      { condition: { type: "not", cond: { type: "ok", step: 3 } }, stmt: { sql: "ROLLBACK" } },
    ] } }, { type: "close" }] }))),
  }),
);

const SEED = Number(process.env.TWILL_FUZZ_SEED ?? 20261123);

test(`fuzz: ${RUNS} random requests, each answered with well-formed JSON`, { timeout: Math.max(15, RUNS / 1000) * 60_000 }, async () => {
  const before = await keepDigest();
  let ok = 0;
  let done = 0;
  const started = Date.now();
  console.log(`fuzz: ${RUNS} cases, seed ${SEED} (replay: TWILL_FUZZ_SEED=${SEED} TWILL_FUZZ_RUNS=${RUNS})`);
  await fc.assert(
    fc.asyncProperty(fuzzCase, async ({ path, body }) => {
      const { status } = await send(path, body);
      if (status === 200) ok++;
      if (++done % 10_000 === 0) console.log(`fuzz: ${done}/${RUNS} cases, ${Math.round((Date.now() - started) / 1000)} s`);
    }),
    { numRuns: RUNS, seed: SEED, endOnFailure: true },
  );
  // Some cases must have succeeded, or the fuzzer only tested the parsers.
  assert.ok(ok > RUNS / 20, `only ${ok} of ${RUNS} cases succeeded`);
  assert.deepEqual(await keepDigest(), before, "failed requests changed nothing in `keep`");
});

test("huge and deeply nested bodies are refused with JSON errors, and the isolate still serves", async () => {
  const deep = "[".repeat(100_000) + "]".repeat(100_000);
  for (const path of ["/v1/db/fuzz/query", "/v1/db/fuzz/v2/pipeline"]) {
    const nested = await send(path, deep);
    assert.equal(nested.status, 400);
    const huge = await send(path, JSON.stringify({ sql: "SELECT 1", params: ["x".repeat(9 << 20)] }));
    assert.equal(huge.status, 413);
  }
  const r = await query(engine.url, DB, "SELECT count(*) FROM keep");
  assert.equal(r.status, 200);
  assert.deepEqual(r.body.rows, [[5]]);
});
