// Runs the built Worker (build/worker) in workerd through miniflare, with miniflare's real
// R2 implementation persisted to a directory, so a test can stop the runtime and start a
// new one on the same data.
import { Miniflare } from "miniflare";
export { Miniflare };
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const buildDir = path.resolve(here, "../../build/worker");

export function tempDir(prefix = "twill-e2e-") {
  return mkdtempSync(path.join(tmpdir(), prefix));
}

export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

/** The baton key tests run with (interactive transactions need one). */
export const TEST_BATON_KEY = "e2e-baton-key-0123456789abcdef0123456789";

/** The engine Worker's miniflare options (one entry of `workers`). Local runs allow
 * anonymous access and seal batons, as `make dev` does; `extra.bindings` add to or
 * override that (a test of tokens sets TWILL_TOKENS, a test of the refusal unsets). */
export function engineWorker(name = "engine", extra = {}) {
  const { bindings, ...rest } = extra;
  return {
    name,
    modules: true,
    modulesRoot: buildDir,
    scriptPath: path.join(buildDir, "index.mjs"),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
    compatibilityDate: "2026-04-01",
    r2Buckets: { BUCKET: "twilldb-edge" },
    bindings: { TWILL_ALLOW_ANONYMOUS: "true", TWILL_BATON_KEY: TEST_BATON_KEY, ...(bindings ?? {}) },
    ...rest,
  };
}

/** Starts workerd with the engine Worker; returns { mf, url, stop }. */
export async function startEngine({ persistDir, workers, extra } = {}) {
  const mf = new Miniflare({
    host: "127.0.0.1",
    port: 0,
    r2Persist: persistDir ?? false,
    workers: workers ?? [engineWorker("engine", extra)],
  });
  const url = await mf.ready;
  return { mf, url: url.toString().replace(/\/$/, ""), stop: () => mf.dispose() };
}

/** POSTs JSON and returns { status, body, headers }. */
export async function post(url, body, init = {}) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...(init.headers ?? {}) },
    body: typeof body === "string" || body instanceof Uint8Array ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error(`non-JSON answer ${res.status}: ${text.slice(0, 500)}`);
  }
  return { status: res.status, body: json, headers: res.headers };
}

export const query = (base, db, sql, params) =>
  post(`${base}/v1/db/${db}/query`, params === undefined ? { sql } : { sql, params });
export const batch = (base, db, statements) => post(`${base}/v1/db/${db}/batch`, { statements });
