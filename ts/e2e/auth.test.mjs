// Bearer tokens: full, read-only and database-scoped, configured as TWILL_TOKENS.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startEngine, tempDir, removeDir, post } from "./harness.mjs";

const FULL = "full-access-token-0123456789";
const READ = "read-only-token-0123456789";
const OTHER = "other-db-token-0123456789";
let engine, persist;

before(async () => {
  persist = tempDir();
  engine = await startEngine({
    persistDir: persist,
    extra: {
      bindings: {
        TWILL_TOKENS: JSON.stringify([
          { token: FULL, access: "write" },
          { token: READ, access: "read", databases: ["authdb"] },
          { token: OTHER, access: "write", databases: ["otherdb"] },
        ]),
      },
    },
  });
});

after(async () => {
  await engine?.stop();
  removeDir(persist);
});

const q = (token, sql, db = "authdb") =>
  post(`${engine.url}/v1/db/${db}/query`, { sql }, token ? { headers: { authorization: `Bearer ${token}` } } : {});

test("the right token works; missing, wrong and out-of-scope tokens are refused", async () => {
  assert.equal((await q(FULL, "CREATE TABLE t (x)")).status, 200);
  assert.equal((await q(FULL, "INSERT INTO t VALUES (1)")).status, 200);
  const missing = await q(null, "SELECT * FROM t");
  assert.equal(missing.status, 401);
  assert.equal(missing.body.error.code, "UNAUTHORIZED");
  const wrong = await q("not-the-token-0123456789", "SELECT * FROM t");
  assert.equal(wrong.status, 401);
  const other = await q(OTHER, "SELECT * FROM t");
  assert.equal(other.status, 403);
  assert.equal(other.body.error.code, "FORBIDDEN");
  const root = await fetch(`${engine.url}/`);
  assert.equal(root.status, 401, "no endpoint answers without a token");
  const stats = await fetch(`${engine.url}/v1/db/authdb/stats`, { headers: { authorization: `Bearer ${READ}` } });
  assert.equal(stats.status, 200);
});

test("a read-only token reads but cannot write, not even with a PRAGMA", async () => {
  const r = await q(READ, "SELECT x FROM t");
  assert.equal(r.status, 200);
  assert.deepEqual(r.body.rows, [[1]]);
  for (const sql of ["INSERT INTO t VALUES (2)", "DELETE FROM t", "PRAGMA user_version = 5", "PRAGMA user_version(5)", "PRAGMA application_id(5)", "CREATE TABLE u (y)"]) {
    const w = await q(READ, sql);
    assert.equal(w.status, 403, `${sql}: ${JSON.stringify(w.body)}`);
    assert.equal(w.body.error.code, "READ_ONLY");
  }
  const attach = await q(READ, "ATTACH 'x' AS y");
  assert.ok([400, 403].includes(attach.status));
  assert.deepEqual((await q(FULL, "SELECT count(*) FROM t")).body.rows, [[1]], "nothing was written");
  assert.deepEqual((await q(FULL, "PRAGMA user_version")).body.rows, [[0]]);
  assert.deepEqual((await q(FULL, "PRAGMA application_id")).body.rows, [[0]]);
});

test("without tokens and without anonymous access explicitly allowed, nothing is served", async () => {
  const closed = await startEngine({ extra: { bindings: { TWILL_ALLOW_ANONYMOUS: "" } } });
  try {
    for (const path of ["/", "/v1/db/any/query"]) {
      const res = await post(`${closed.url}${path}`, { sql: "SELECT 1" });
      assert.equal(res.status, 500, path);
      assert.equal(res.body.error.code, "MISCONFIGURED");
      assert.match(res.body.error.message, /TWILL_TOKENS/);
    }
  } finally {
    await closed.stop();
  }
});

test("a wrong token is never echoed, whatever its length", async () => {
  for (const wrong of ["x".repeat(17), "secret-" + "y".repeat(300)]) {
    const res = await q(wrong, "SELECT 1");
    assert.equal(res.status, 401);
    assert.ok(!JSON.stringify(res.body).includes(wrong.slice(0, 12)), JSON.stringify(res.body));
  }
});
