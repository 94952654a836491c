// A consumer Worker in the same miniflare binds the engine Worker as a service and calls
// it by fetch and by RPC, through the D1-style client, checked against miniflare's real D1.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { startEngine, engineWorker } from "./harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
let engine;

before(async () => {
  const bundled = await build({
    entryPoints: [path.join(here, "fixtures/consumer.ts")],
    bundle: true,
    format: "esm",
    write: false,
    target: "es2022",
  });
  engine = await startEngine({
    workers: [
      {
        name: "consumer",
        modules: true,
        script: bundled.outputFiles[0].text,
        compatibilityDate: "2026-04-01",
        serviceBindings: { TWILL: "engine" },
        d1Databases: { D1: "consumer-d1" },
      },
      engineWorker("engine"),
    ],
  });
});
after(async () => engine?.stop());

const get = async (p) => {
  const res = await fetch(`${engine.url}${p}`);
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return JSON.parse(text);
};

/** The shape of a value: key names (recursively) and types, not the values themselves. */
function shape(v) {
  if (Array.isArray(v)) return v.map(shape);
  if (v && typeof v === "object") return Object.fromEntries(Object.keys(v).sort().map((k) => [k, shape(v[k])]));
  return typeof v;
}

const D1_META_KEYS = ["changed_db", "changes", "duration", "last_row_id", "rows_read", "rows_written", "size_after"];

test("the D1-style client over the service binding answers like D1", async () => {
  const { twill, d1 } = await get("/compare");
  // Same data, row for row.
  for (const key of ["first", "firstColumn", "firstNone", "raw", "rawNames", "failedBatch", "afterFailedBatch"]) {
    assert.deepEqual(twill[key], d1[key], key);
  }
  assert.deepEqual(twill.all.results, d1.all.results);
  assert.deepEqual(twill.batch.map((r) => r.results), d1.batch.map((r) => r.results));
  assert.equal(twill.afterFailedBatch, 3, "a failed batch is rolled back, as in D1");
  // Same shapes: success/results/meta, and D1's meta fields with D1's types.
  for (const [name, result] of [["insert", twill.insert], ["all", twill.all], ["batch0", twill.batch[0]]]) {
    const other = name === "insert" ? d1.insert : name === "all" ? d1.all : d1.batch[0];
    assert.equal(result.success, true);
    assert.deepEqual(Object.keys(result).filter((k) => k !== "meta").sort(), Object.keys(other).filter((k) => k !== "meta").sort(), name);
    for (const k of D1_META_KEYS) {
      assert.ok(k in other.meta, `D1 reports meta.${k}`);
      assert.equal(typeof result.meta[k], typeof other.meta[k], `meta.${k}`);
    }
  }
  // Rows read are counted as D1 counts them: a lookup reads its row, a scan each row.
  assert.equal(twill.point.meta.rows_read, 1);
  assert.equal(twill.point.meta.rows_read, d1.point.meta.rows_read, "a point select");
  assert.equal(twill.all.meta.rows_read, d1.all.meta.rows_read, "a scan");
  assert.equal(twill.insert.meta.changes, d1.insert.meta.changes);
  assert.equal(twill.insert.meta.last_row_id, d1.insert.meta.last_row_id);
  assert.deepEqual(shape(twill.exec), shape(d1.exec));
  // Our count is the number of statements run (D1's documentation); miniflare's local D1
  // reports a different figure for two statements, so only the type is compared.
  assert.equal(twill.exec.count, 2);
});

test("a D1-style migration with PRAGMA defer_foreign_keys recreates a parent table, as in D1", async () => {
  const { twill, d1 } = await get("/migration");
  assert.deepEqual(twill, {
    withoutDefer: "foreign key",
    withDefer: "ok",
    childFirst: "ok",
    orphanAtCommit: "foreign key",
    immediateAgain: "foreign key",
    optimize: "ok",
    columns: [["id"], ["name"], ["email"]],
    posts: [[10, 1], [11, 2]],
    orphans: 0,
  });
  assert.deepEqual(twill, d1, "miniflare's D1 (SQLite) answers the same");
});

test("the same client over HTTP through the binding's fetch gives the same answers", async () => {
  const http = await get("/http");
  const { twill } = await get("/compare");
  for (const key of ["first", "firstColumn", "firstNone", "raw", "rawNames", "failedBatch", "afterFailedBatch"]) {
    assert.deepEqual(http[key], twill[key], key);
  }
  assert.deepEqual(http.all.results, twill.all.results);
  assert.equal(http.exec.count, 2);
});

test("RPC: exact 64-bit integers as BigInt, blobs as bytes, errors as codes", async () => {
  const r = await get("/rpc");
  assert.equal(r.inserted.rows_affected, 1);
  assert.deepEqual(r.selected.columns, ["i", "b", "t", "same"]);
  assert.equal(r.selected.i, "9223372036854775807n");
  assert.equal(r.selected.iIsBigInt, true);
  assert.deepEqual(r.selected.b, [1, 2, 255]);
  assert.equal(r.selected.bIsBytes, true);
  assert.equal(r.selected.same, 1, "the BigInt parameter bound exactly");
  assert.equal(typeof r.selected.meta.duration_ms, "number");
  assert.equal(r.bad.error.code, "SQL_ERROR");
  assert.equal(r.badName.error.code, "INVALID_DATABASE_NAME");
  assert.equal(r.badParam.error.code, "INVALID_PARAMS");
  assert.deepEqual(r.batch.results.map((x) => x.rows[0][0]), [1, 2]);
  assert.equal(r.thrown.code, "SQL_ERROR");
});

test("history through the client, over RPC and HTTP: asOf, history, restore and undo, fork, delete", async () => {
  const out = await get("/history");
  for (const kind of ["rpc", "http"]) {
    const r = out[kind];
    assert.deepEqual(r.pastRows, [[1]], kind);
    assert.equal(r.refused, "STATEMENT_NOT_ALLOWED", kind);
    assert.ok(r.headIsDrop, kind);
    assert.ok(r.restored, kind);
    assert.equal(r.afterRestore, 1, kind);
    assert.equal(r.fork, `${kind}-hist-fork`);
    assert.ok(r.undone, kind);
    assert.match(r.afterUndo, /no such table/, kind);
    assert.ok(r.deleted, kind);
    assert.equal(r.tablesAfterDelete, 0, kind);
  }
  assert.deepEqual(out.forkRows, [[1]]);
});
