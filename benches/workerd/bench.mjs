// Benchmarks in workerd (through miniflare, loopback only): throughput and latency of TwillDB
// Edge over HTTP and over a service binding, side by side with a D1 Worker and a Durable
// Object SQLite Worker (Exp 2 in the Worker), R2 writes per commit, and cold starts (Exp 5).
//
//   node benches/workerd/bench.mjs > out.md     (TWILL_BENCH_SMOKE=1: a tiny run)
//
// Writes markdown to stdout and target figures as JSON lines to $TWILL_BENCH_TARGETS.
import { appendFileSync, readFileSync, statSync, readdirSync } from "node:fs";
import path from "node:path";
import http from "node:http";
import { gzipSync } from "node:zlib";
import { Miniflare, engineWorker, buildDir, tempDir, removeDir } from "../../ts/e2e/harness.mjs";
import { SCHEMA, POINT, INSERT, LOAD, d1Worker, doWorker, bindingWorker, helloWorker } from "./workers.mjs";

const SMOKE = process.env.TWILL_BENCH_SMOKE === "1";
const scale = (full, smoke) => (SMOKE ? smoke : full);
const ROWS = scale(100_000, 2_000);
const LOAD_STEP = 10_000;
const CELL_MS = scale(2_500, 200);
const CELL_MAX = scale(20_000, 40);
const COLD_SIZES_MIB = scale([1, 64, 256], [1]);
/// How long the cold-start section lets the writer be quiet after loading (ms).
const QUIET_WAIT_MS = 2500;
const COMPAT = "2026-04-01";
// Emulated R2 latency for the group-commit cells (miniflare's local R2 answers in ~1 ms).
const EMULATED_R2_MS = 20;

const out = (line = "") => process.stdout.write(line + "\n");
function target(name, value, met) {
  const line = JSON.stringify({ target: name, value, met });
  process.stderr.write(`target: ${line}\n`);
  if (process.env.TWILL_BENCH_TARGETS) appendFileSync(process.env.TWILL_BENCH_TARGETS, line + "\n");
}

// One point of a chart `make bench` draws (benches/report.mjs), as a JSON line to $TWILL_BENCH_CHARTS.
function chartPoint(chart, series, x, y) {
  if (process.env.TWILL_BENCH_CHARTS) appendFileSync(process.env.TWILL_BENCH_CHARTS, JSON.stringify({ chart, series, x, y }) + "\n");
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil(p * sorted.length))) - 1];
}

async function json(url, init) {
  let res;
  try {
    res = await fetch(url, init);
  } catch (e) {
    // After a very long request (a 1 GiB upload, a long scan) the pooled keep-alive
    // connection is sometimes already closed by workerd: a GET (safe to repeat) is sent
    // again once, on a new connection. Anything else is reported.
    if ((init?.method ?? "GET") !== "GET" || e?.cause?.code !== "ECONNRESET") throw e;
    res = await fetch(url, init);
  }
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`${url}: non-JSON answer ${res.status}: ${text.slice(0, 300)}`);
  }
  if (!res.ok || body.error) throw new Error(`${url}: ${res.status} ${text.slice(0, 300)}`);
  return body;
}

/**
 * Runs `concurrency` loops of requests for at most CELL_MS and CELL_MAX requests in all.
 * `request(i)` returns [url, init]; `check(body)` throws on a wrong answer.
 */
async function loadCell(request, check, concurrency) {
  return summarize(await loadSlice(request, check, concurrency, 0, CELL_MS, CELL_MAX));
}

/** Requests `first`, `first + 1`, … for at most `ms` and `max` requests: latencies and time taken. */
async function loadSlice(request, check, concurrency, first, ms, max) {
  const latencies = [];
  let next = first;
  const started = performance.now();
  const end = started + ms;
  async function loop() {
    while (performance.now() < end && next < first + max) {
      const i = next++;
      const [url, init] = request(i);
      const t = performance.now();
      check(await json(url, init));
      latencies.push(performance.now() - t);
    }
  }
  await Promise.all(Array.from({ length: concurrency }, loop));
  return { latencies, seconds: (performance.now() - started) / 1000 };
}

function summarize({ latencies, seconds }) {
  latencies.sort((a, b) => a - b);
  return { n: latencies.length, rps: latencies.length / seconds, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) };
}

/// Slices each system of an interleaved cell gets (see `interleavedCells`).
const ROUNDS = scale(10, 2);

/**
 * One cell per system, measured in alternation: ROUNDS rounds in which every system runs for
 * CELL_MS / ROUNDS, in an order that reverses each round. A noisy moment on this machine then
 * falls on all of them alike, so their ratios hold where cells run one after another do not.
 * `systems` are [{ name, point, check }]; returns one cell per system, in order.
 */
async function interleavedCells(systems, concurrency) {
  const slices = systems.map(() => ({ latencies: [], seconds: 0, next: 0 }));
  for (let round = 0; round < ROUNDS; round++) {
    const order = systems.map((_, i) => i);
    if (round % 2 === 1) order.reverse();
    for (const i of order) {
      const sys = systems[i];
      const got = await loadSlice(sys.point, sys.check, concurrency, slices[i].next, CELL_MS / ROUNDS, Math.ceil(CELL_MAX / ROUNDS));
      slices[i].latencies.push(...got.latencies);
      slices[i].seconds += got.seconds;
      slices[i].next += got.latencies.length;
    }
  }
  return slices.map(summarize);
}

const postJson = (body, headers = {}) => ({ method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) });
// Pseudo-random existing keys, the same sequence for every system.
const key = (i) => (i * 48271) % ROWS;

/** A system under test: how to reach it, load it and ask it the two questions. */
function jsSystem(name, base) {
  return {
    name,
    setup: () => json(`${base}/setup`),
    load: (from, to) => json(`${base}/load?from=${from}&to=${to}`),
    point: (i) => [`${base}/point?id=${key(i)}`],
    insert: (id) => [`${base}/insert?id=${id}`],
  };
}

function httpSystem(name, base, headers = {}) {
  const q = (sql, params) => [`${base}/v1/db/bench/query`, postJson({ sql, params }, headers)];
  return {
    name,
    setup: () => json(`${base}/v1/db/bench/batch`, postJson({ statements: SCHEMA.map((sql) => ({ sql })) })),
    load: (from, to) => json(...q(LOAD, [from, to])),
    point: (i) => q(POINT, [key(i)]),
    insert: (id) => q(INSERT, [id, id, `new-${id}`]),
  };
}

const anyJson = () => {};

const pointOk = (b) => {
  const row = b.row ?? b.rows?.[0];
  if (!row) throw new Error(`point select found no row: ${JSON.stringify(b).slice(0, 200)}`);
};
const hranaOk = (b) => {
  const r = b.results?.[0];
  if (r?.type !== "ok" || r.response.result.rows.length !== 1) throw new Error(`Hrana point select found no row: ${JSON.stringify(b).slice(0, 200)}`);
};
const insertOk = (b) => {
  if (!((b.changes ?? b.rows_affected) >= 1)) throw new Error(`insert changed no row: ${JSON.stringify(b).slice(0, 200)}`);
};

async function loadData(sys) {
  await sys.setup();
  for (let from = 0; from < ROWS; from += LOAD_STEP) await sys.load(from, Math.min(ROWS, from + LOAD_STEP));
}

async function start(workers, extra = {}) {
  const mf = new Miniflare({ host: "127.0.0.1", port: 0, workers, ...extra });
  const url = (await mf.ready).toString().replace(/\/$/, "");
  return { mf, url };
}

const engine = (extra) => engineWorker("engine", extra);
const jsWorker = (name, script, extra = {}) => ({ name, modules: true, script, compatibilityDate: COMPAT, ...extra });

async function stats(url) {
  return json(`${url}/v1/db/bench/stats`);
}

// ---------------------------------------------------------------- throughput and latency

let sessionR2 = NaN;
let strictRoundTrips = null;

async function throughput() {
  const rows = [];
  const r2 = {};
  const r2Emulated = {};
  let nextId = 1_000_000;
  const measure = async (sys, ops, onInsert) => {
    for (const op of ops) {
      for (const c of [1, 16]) {
        let cell;
        if (op === "point select") {
          cell = await loadCell(sys.point, pointOk, c);
        } else {
          const base = nextId;
          nextId += CELL_MAX;
          const before = onInsert ? await onInsert() : null;
          cell = await loadCell((i) => sys.insert(base + i), insertOk, c);
          if (onInsert) r2[c] = { before, after: await onInsert(), commits: cell.n };
        }
        rows.push({ system: sys.name, op, c, ...cell });
      }
    }
  };

  // The anchors of the point-select ratios, in runtimes of their own that stay up while
  // TwillDB Edge is measured, so that their cells interleave with ours: the D1 Worker and
  // an empty JS Worker (the same request loop against an answer that does no database work).
  const helloRt = await start([jsWorker("hello", helloWorker)]);
  const d1Rt = await start([jsWorker("d1", d1Worker, { d1Databases: { D1: "bench-d1" } })]);
  const dir = tempDir("twill-bench-");
  try {
    const d1 = jsSystem("D1 Worker (miniflare local D1)", d1Rt.url);
    await loadData(d1);

    // TwillDB Edge over HTTP (the data is loaded once, in R2 persisted to a directory, and
    // reused by the service-binding run below).
    let rt = await start([engine()], { r2Persist: dir });
    const http = httpSystem("TwillDB Edge, HTTP", rt.url);
    await loadData(http);
    // A session: reads carry the bookmark of the session's last write.
    const bookmark = (await json(...http.point(0))).meta.bookmark;
    const session = httpSystem("TwillDB Edge, HTTP, session bookmark", rt.url, { "x-twill-bookmark": bookmark });
    const stale = httpSystem("TwillDB Edge, HTTP, staleness ≤ 1 s", rt.url, { "x-twill-max-staleness-ms": "1000" });
    // What @libsql/client sends for `execute` (a Hrana pipeline of the statement and a
    // close), with the same session bookmark.
    const hranaPoint = (i) => [`${rt.url}/v1/db/bench/v3/pipeline`, postJson({ requests: [
      { type: "execute", stmt: { sql: POINT, args: [{ type: "integer", value: String(key(i)) }] } }, { type: "close" }] },
      { "x-twill-bookmark": bookmark })];
    const points = [
      { name: http.name, point: http.point, check: pointOk },
      { name: stale.name, point: stale.point, check: pointOk },
      { name: "TwillDB Edge, GET / (wasm entry, routing, JSON answer; no database)", point: () => [`${rt.url}/`], check: anyJson },
      { name: session.name, point: session.point, check: pointOk },
      { name: "TwillDB Edge, Hrana pipeline (libSQL clients), session bookmark", point: hranaPoint, check: hranaOk },
      { name: "empty JS Worker (fixed JSON answer)", point: () => [`${helloRt.url}/`, postJson({ sql: POINT, params: [key(0)] })], check: anyJson },
      { name: d1.name, point: d1.point, check: pointOk },
    ];
    for (const c of [1, 16]) {
      const cells = await interleavedCells(points, c);
      cells.forEach((cell, i) => rows.push({ system: points[i].name, op: "point select", c, ...cell }));
    }
    await measure(http, ["single-row insert"], () => stats(rt.url));
    let sessionReads = 0;
    const probes = scale(200, 10);
    for (let i = 0; i < probes; i++) sessionReads += (await json(...session.point(i))).meta.r2_reads;
    sessionR2 = sessionReads / probes;
    await rt.mf.dispose();

    // The same inserts with every R2 call delayed as if R2 were a network round trip away.
    rt = await start([engine({ bindings: { TWILL_EMULATE_R2_LATENCY_MS: String(EMULATED_R2_MS) } })], { r2Persist: dir });
    const slow = httpSystem(`TwillDB Edge, HTTP, R2 calls +${EMULATED_R2_MS} ms`, rt.url);
    pointOk(await json(...slow.point(0))); // opens the database in this isolate, so its counters exist
    // Strict reads prove freshness with the next log record's GET and the manifest's HEAD
    // at once, sent ahead of the read: one round trip, also for the reads that fetch their
    // leaf's page group (most of them here: this isolate has cached little of the table).
    const strict = await loadCell(slow.point, pointOk, 1);
    let strictReads = 0;
    for (let i = 0; i < 10; i++) strictReads += (await json(...slow.point(i))).meta.r2_reads;
    strictRoundTrips = { p50: strict.p50, reads: strictReads / 10 };
    for (const c of [1, 16]) {
      const base = nextId;
      nextId += CELL_MAX;
      const before = await stats(rt.url);
      const cell = await loadCell((i) => slow.insert(base + i), insertOk, c);
      r2Emulated[c] = { before, after: await stats(rt.url), commits: cell.n };
      rows.push({ system: slow.name, op: "single-row insert", c, ...cell });
    }
    await rt.mf.dispose();

    rt = await start([jsWorker("consumer", bindingWorker, { serviceBindings: { TWILL: "engine" } }), engine()], { r2Persist: dir });
    await measure(jsSystem("TwillDB Edge, service binding (RPC)", rt.url), ["point select", "single-row insert"]);
    await rt.mf.dispose();

    await measure(d1, ["single-row insert"]);
  } finally {
    removeDir(dir);
    await helloRt.mf.dispose();
    await d1Rt.mf.dispose();
  }

  const rt = await start([jsWorker("do", doWorker, { durableObjects: { BENCH: { className: "BenchDO", useSQLite: true } } })]);
  const dobj = jsSystem("Durable Object SQLite Worker", rt.url);
  await loadData(dobj);
  await measure(dobj, ["point select", "single-row insert"]);
  await rt.mf.dispose();

  out(`Same schema and ${ROWS.toLocaleString("en")} rows in every system (\`items(id INTEGER PRIMARY KEY, k, v)\`, index on \`k\`). ` +
      `Node's fetch on loopback; each cell runs ${CELL_MS / 1000} s or ${CELL_MAX.toLocaleString("en")} requests, whichever ends first; ` +
      `the point-select cells of TwillDB Edge over HTTP, the empty JS Worker and the D1 Worker run interleaved (${ROUNDS} rounds, each ` +
      `system ${CELL_MS / ROUNDS} ms a round, in an order that reverses each round), so that the ratios between them do not hang on one noisy moment; ` +
      `a wrong or failed answer aborts the run. The D1 and Durable Object Workers and the service-binding consumer are one hop ` +
      `(HTTP → JS Worker → binding); "HTTP" reaches the TwillDB Edge Worker directly. Miniflare keeps R2, D1 and DO storage on local disk/memory: ` +
      `these figures compare engines and protocol work, not Cloudflare's network.`);
  out();
  out("| operation | concurrency | system | requests | req/s | p50 ms | p99 ms | × D1 req/s |");
  out("|---|---|---|---|---|---|---|---|");
  for (const op of ["point select", "single-row insert"]) {
    for (const c of [1, 16]) {
      const d1Row = rows.find((r) => r.op === op && r.c === c && r.system.startsWith("D1"));
      for (const r of rows.filter((r) => r.op === op && r.c === c)) {
        out(`| ${op} | ${c} | ${r.system} | ${r.n} | ${r.rps.toFixed(0)} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} | ${(r.rps / d1Row.rps).toFixed(2)} |`);
      }
    }
  }
  out();
  for (const c of [1, 16]) {
    const ours = rows.find((r) => r.op === "point select" && r.c === c && r.system === "TwillDB Edge, HTTP");
    const d1Row = rows.find((r) => r.op === "point select" && r.c === c && r.system.startsWith("D1"));
    const ratio = ours.rps / d1Row.rps;
    target(`Worker point-select throughput over HTTP ≥ 1.0× the D1 Worker (concurrency ${c})`, `${ratio.toFixed(2)}×`, ratio >= 1.0);
    const session = rows.find((r) => r.op === "point select" && r.c === c && r.system === "TwillDB Edge, HTTP, session bookmark");
    const sRatio = session.rps / d1Row.rps;
    target(`point-select throughput with a session bookmark ≥ 1.5× the D1 Worker (concurrency ${c})`, `${sRatio.toFixed(2)}×`, sRatio >= 1.5);
  }
  target("R2 reads per session read on a warm isolate = 0", sessionR2.toFixed(2), sessionR2 === 0);
  out("**Where the time of one warm point select goes** (concurrency 1, mean ms per request = 1000 ÷ req/s; by difference between the rows");
  out("above, since a Worker's clock does not advance while its code runs, so phases cannot be timed from inside):");
  out();
  const perRequest = (system) => 1000 / rows.find((r) => r.op === "point select" && r.c === 1 && r.system.startsWith(system)).rps;
  const phases = [
    ["the runtime, loopback HTTP and a JS Worker's answer (empty JS Worker)", perRequest("empty JS Worker"), 0],
    ["entering the wasm module, routing, building and encoding a JSON answer (`GET /`)", perRequest("TwillDB Edge, GET /"), perRequest("empty JS Worker")],
    ["auth, JSON body parse, the engine's point select, the answer's rows and meta (staleness ≤ 1 s)", perRequest("TwillDB Edge, HTTP, staleness ≤ 1 s"), perRequest("TwillDB Edge, GET /")],
    ["the freshness probe to R2 (strict read, the default)", perRequest("TwillDB Edge, HTTP"), perRequest("TwillDB Edge, HTTP, staleness ≤ 1 s")],
  ];
  out("| phase | ms per request | share of a strict read |");
  out("|---|---|---|");
  const total = perRequest("TwillDB Edge, HTTP");
  for (const [what, upTo, from] of phases) out(`| ${what} | ${(upTo - from).toFixed(3)} | ${(((upTo - from) / total) * 100).toFixed(0)}% |`);
  out();
  {
    const empty = rows.find((r) => r.op === "point select" && r.c === 1 && r.system.startsWith("empty JS Worker"));
    const stale = rows.find((r) => r.op === "point select" && r.c === 1 && r.system === "TwillDB Edge, HTTP, staleness ≤ 1 s");
    const ratio = stale.rps / empty.rps;
    target("HTTP point select with the probe skipped (staleness ≤ 1 s) ≥ 0.8× an empty Worker (concurrency 1)", `${ratio.toFixed(2)}×`, ratio >= 0.8);
  }
  const trips = strictRoundTrips.p50 / EMULATED_R2_MS;
  out(`**Strict reads** with every R2 call delayed ${EMULATED_R2_MS} ms: p50 ${strictRoundTrips.p50.toFixed(1)} ms ` +
      `(${trips.toFixed(2)} × one R2 call), ${strictRoundTrips.reads.toFixed(1)} R2 calls per read (the next log record's GET, sent ` +
      `ahead of the read, with the manifest's HEAD only after half the GC window without a manifest read, and the GET of the leaf's page group when it is not cached yet). **Sessions**: ${sessionR2.toFixed(2)} R2 reads per read on a warm isolate.`);
  out();
  target("R2 round trips per strict read = 1 (p50 latency ÷ emulated R2 latency)", `${trips.toFixed(2)}`, trips < 2);

  // R2 writes per commit, from the engine's own counters around the insert cells.
  out("**R2 writes per commit in the Worker** (counted by the engine around the HTTP insert cells, one isolate): log records are the");
  out("commit path (one create-only PUT each); all writes add the checkpoints (chunks, manifest, GC deletes) amortized over the commits.");
  out();
  out(`The second pair of rows delays every R2 call by ${EMULATED_R2_MS} ms (\`TWILL_EMULATE_R2_LATENCY_MS\`): miniflare's R2 answers in about a millisecond, `);
  out("so fewer requests queue behind each commit than would against R2 itself.");
  out();
  out("| R2 | concurrent writers | commits | log records | log PUTs per commit | all R2 writes per commit |");
  out("|---|---|---|---|---|---|");
  const perCommit = {};
  for (const [label, counts] of [["miniflare local", r2], [`local +${EMULATED_R2_MS} ms per call`, r2Emulated]]) {
    for (const c of [1, 16]) {
      const { before, after, commits } = counts[c];
      const records = after.applied_seq - before.applied_seq;
      const writes = after.r2.writes - before.r2.writes;
      perCommit[`${label}/${c}`] = { records, writes, commits };
      out(`| ${label} | ${c} | ${commits} | ${records} | ${(records / commits).toFixed(3)} | ${(writes / commits).toFixed(3)} |`);
    }
  }
  out();
  const one = perCommit["miniflare local/1"];
  target("exactly 1 R2 write (log PUT) per commit with 1 writer",
    `${(one.records / one.commits).toFixed(3)} log PUTs per commit (all writes incl. amortized checkpoints ${(one.writes / one.commits).toFixed(3)})`,
    one.records === one.commits);
  const local16 = perCommit["miniflare local/16"];
  const slow16 = perCommit[`local +${EMULATED_R2_MS} ms per call/16`];
  target("≤ 0.2 R2 writes per commit with 16 concurrent writers",
    `${(slow16.writes / slow16.commits).toFixed(3)} with ${EMULATED_R2_MS} ms per R2 call; ${(local16.writes / local16.commits).toFixed(3)} against miniflare's ~1 ms R2 (all writes incl. checkpoints)`,
    slow16.writes / slow16.commits <= 0.2);
}

// ---------------------------------------------------------------- interactive transactions

/** `@libsql/client`'s transaction(): read a row, update it, commit; on one isolate, and with
 * every request going to the other of two isolates (no sticky routing). */
async function interactive() {
  const { createRequire } = await import("node:module");
  const require = createRequire(new URL("../../ts/package.json", import.meta.url));
  const { createClient } = require("@libsql/client");
  const dir = tempDir("twill-bench-tx-");
  const n = scale(300, 10);
  const rows = [];
  try {
    const mf = new Miniflare({ r2Persist: dir, workers: [engineWorker("a"), engineWorker("b")] });
    await mf.ready;
    const via = (pick) => {
      let i = 0;
      return async (input, init) => {
        const req = input instanceof Request ? input : new Request(input, init);
        const worker = await mf.getWorker(pick(i++));
        const body = req.method === "GET" || req.method === "HEAD" ? undefined : await req.arrayBuffer();
        const res = await worker.fetch(req.url, { method: req.method, headers: req.headers, body });
        return new Response(await res.arrayBuffer(), { status: res.status, headers: res.headers });
      };
    };
    const setup = createClient({ url: "http://localhost/v1/db/txbench/", fetch: via(() => "a") });
    await setup.batch(["CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)", "INSERT INTO acct VALUES (1, 0)"], "write");
    for (const [label, pick] of [["same isolate", () => "a"], ["each request on the other isolate", (i) => (i % 2 ? "a" : "b")]]) {
      const client = createClient({ url: "http://localhost/v1/db/txbench/", fetch: via(pick) });
      const latencies = [];
      for (let i = 0; i < n; i++) {
        const t = performance.now();
        const tx = await client.transaction("write");
        const row = await tx.execute("SELECT n FROM acct WHERE id = 1");
        await tx.execute({ sql: "UPDATE acct SET n = ? WHERE id = 1", args: [Number(row.rows[0][0]) + 1] });
        await tx.commit();
        latencies.push(performance.now() - t);
      }
      latencies.sort((a, b) => a - b);
      rows.push({ label, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) });
    }
    const final = await setup.execute("SELECT n FROM acct WHERE id = 1");
    if (Number(final.rows[0][0]) !== 2 * n) throw new Error(`interactive transactions lost increments: ${final.rows[0][0]} of ${2 * n}`);
    await mf.dispose();
  } finally {
    removeDir(dir);
  }
  out(`\`@libsql/client\` \`transaction("write")\`: BEGIN, a SELECT, an UPDATE, COMMIT (4 Hrana requests), ${n} times in a row; ` +
      "miniflare's local R2. The counter is checked afterwards.");
  out();
  out("| routing | transaction p50 ms | p99 ms | × same isolate (p50) |");
  out("|---|---|---|---|");
  for (const r of rows) out(`| ${r.label} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${(r.p50 / rows[0].p50).toFixed(2)} |`);
  out();
}

// ---------------------------------------------------------------- memory

/** The resident memory (kB) of the workerd processes this process started. */
/** PUTs `bytes` on a connection of its own: fetch would reuse the keep-alive connection of
 * the requests before, which workerd may close meanwhile, and a 1 GiB body cannot be retried
 * (seen as `write EPIPE`). */
function putOnNewConnection(url, bytes) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: "PUT", agent: false, headers: { "content-length": bytes.length } }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("error", reject);
    req.end(bytes);
  });
}

function workerdRssKb() {
  let total = 0;
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const status = readFileSync(`/proc/${pid}/status`, "utf8");
      if (!/^Name:\s*workerd/m.test(status) || !new RegExp(`^PPid:\\s*${process.pid}$`, "m").test(status)) continue;
      total += Number(/^VmRSS:\s*(\d+)/m.exec(status)?.[1] ?? 0);
    } catch {
      // the process ended meanwhile
    }
  }
  return total;
}

/** A database far larger than the cache, imported as a SQLite file, then scanned whole:
 * the isolate's memory stays within the cache budget, far from the 128 MB isolate limit. */
async function memory() {
  const { createRequire } = await import("node:module");
  const require = createRequire(new URL("../../ts/package.json", import.meta.url));
  const { createClient } = require("@libsql/client");
  // 1 GiB (about two minutes: making the file, importing it, scanning it);
  // TWILL_BENCH_MEMORY_MIB overrides.
  const mib = Number(process.env.TWILL_BENCH_MEMORY_MIB ?? scale(1024, 8));
  const dir = tempDir("twill-bench-mem-");
  try {
    const file = path.join(dir, "big.db");
    const src = createClient({ url: `file:${file}` });
    await src.execute("CREATE TABLE kv (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)");
    const rowsTotal = Math.floor((mib * 1048576) / 1040);
    for (let from = 0; from < rowsTotal; from += 50_000) {
      await src.execute({
        sql: "WITH RECURSIVE s(v) AS (SELECT ? UNION ALL SELECT v + 1 FROM s WHERE v < ?) INSERT INTO kv SELECT v, randomblob(1000) FROM s",
        args: [from, Math.min(rowsTotal, from + 50_000) - 1],
      });
    }
    src.close();
    const bytes = readFileSync(file);
    // Unbounded VM steps and R2 calls: a 1 GiB import and a cold full scan need thousands of
    // calls (past the free plan's 1,000 per invocation; a paid plan allows 10,000).
    const rt = await start([engine({ bindings: { TWILL_MAX_VM_STEPS: "1000000000", TWILL_MAX_R2_CALLS: "0" } })], { r2Persist: path.join(dir, "r2") });
    // Idle: after a first request, so the module is compiled and the engine instantiated.
    await json(`${rt.url}/v1/db/warm/query`, postJson({ sql: "SELECT 1" }));
    const idle = workerdRssKb();
    const wasmIdle = (await json(`${rt.url}/v1/db/mem/stats`)).wasm_memory_bytes;
    let peak = idle;
    const sampler = setInterval(() => (peak = Math.max(peak, workerdRssKb())), 20);
    const t0 = performance.now();
    const res = await putOnNewConnection(`${rt.url}/v1/db/mem/import`, bytes);
    const imported = JSON.parse(res.body);
    if (res.status !== 200) throw new Error(`import failed: ${res.body.slice(0, 300)}`);
    const importSeconds = (performance.now() - t0) / 1000;
    const afterImport = peak;
    const wasmAfterImport = (await json(`${rt.url}/v1/db/mem/stats`)).wasm_memory_bytes;
    peak = workerdRssKb();
    const t1 = performance.now();
    const scan = await json(`${rt.url}/v1/db/mem/query`, postJson({ sql: "SELECT count(*), sum(length(pad)) FROM kv" }));
    const scanSeconds = (performance.now() - t1) / 1000;
    clearInterval(sampler);
    peak = Math.max(peak, workerdRssKb());
    if (scan.rows[0][0] !== rowsTotal || scan.rows[0][1] !== rowsTotal * 1000) {
      throw new Error(`the scan answered ${JSON.stringify(scan.rows)} for ${rowsTotal} rows`);
    }
    const stats = await json(`${rt.url}/v1/db/mem/stats`);
    await rt.mf.dispose();
    const mb = (kb) => (kb / 1024).toFixed(0);
    out(`A ${mib} MiB SQLite file (${rowsTotal.toLocaleString("en")} rows of 1,000 bytes) imported over HTTP (${importSeconds.toFixed(1)} s, ` +
        `${imported.meta.r2_writes} R2 writes, check: ${imported.check}), then \`SELECT count(*), sum(length(pad))\` over all of it ` +
        `(${scanSeconds.toFixed(1)} s, ${scan.meta.r2_reads} R2 reads, ${(scan.meta.r2_bytes_read / 1048576).toFixed(0)} MiB read). ` +
        `Resident memory of the workerd process (the runtime and the isolate), sampled every 20 ms:`);
    out();
    const mib1 = (b) => (b / 1048576).toFixed(0);
    out("The isolate's own memory is its wasm linear memory (which only grows, so each figure is the peak so far); the workerd " +
        "process also holds miniflare's local R2 and the request bodies.");
    out();
    out("| phase | isolate wasm memory MiB | workerd RSS MB | RSS over idle MB |");
    out("|---|---|---|---|");
    out(`| idle, Worker loaded | ${mib1(wasmIdle)} | ${mb(idle)} | 0 |`);
    out(`| after the import | ${mib1(wasmAfterImport)} | ${mb(afterImport)} | ${mb(afterImport - idle)} |`);
    out(`| after the full scan | ${mib1(stats.wasm_memory_bytes)} | ${mb(peak)} | ${mb(peak - idle)} |`);
    out();
    out(`Page cache after the scan: ${(stats.cache.bytes / 1048576).toFixed(1)} MiB of its ${(stats.cache.budget_bytes / 1048576).toFixed(0)} MiB budget, ` +
        `${stats.cache.evictions.toLocaleString("en")} evictions.`);
    out();
    target(`full scan of a ${mib} MiB database: the isolate's memory stays under 128 MB`, `${mib1(stats.wasm_memory_bytes)} MiB wasm memory at its peak (cache budget ${mib1(stats.cache.budget_bytes)} MiB)`,
      stats.wasm_memory_bytes < 128e6);
  } finally {
    removeDir(dir);
  }
}

// ---------------------------------------------------------------- cold start

function wasmSize() {
  const file = readdirSync(buildDir).find((f) => f.endsWith(".wasm"));
  const bytes = readFileSync(path.join(buildDir, file));
  const entry = statSync(path.join(buildDir, "index.mjs")).size;
  return { raw: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length, entry };
}

async function coldStart() {
  const size = wasmSize();
  const mb = (n) => (n / 1e6).toFixed(2);
  out(`**Module size** (after two rounds of \`wasm-opt -Oz --one-caller-inline-max-function-size=20 --low-memory-unused\` from npm's binaryen, as built by \`make worker\`): wasm ${mb(size.raw)} MB raw, ` +
      `**${mb(size.gzip)} MB gzip -9**; JS entry and glue ${(size.entry / 1e3).toFixed(1)} kB.`);
  out();
  target("wasm module ≤ 2.4 MB gzip (aim 2.0; the free plan allows 3 MB)", `${mb(size.gzip)} MB`, size.gzip <= 2.4e6);

  // Time from a fresh runtime (a new workerd process) to the first answer.
  const timeFresh = async (workers, extra, request, check) => {
    const t0 = performance.now();
    const rt = await start(workers, extra);
    const t1 = performance.now();
    const body = await json(...request(rt.url));
    const t2 = performance.now();
    check(body);
    const t = performance.now();
    await json(...request(rt.url));
    const warm = performance.now() - t;
    await rt.mf.dispose();
    return { startup: t1 - t0, first: t2 - t1, warm, body };
  };
  const rows = [];
  const hello = await timeFresh([jsWorker("hello", helloWorker)], {}, (u) => [`${u}/`], () => {});
  rows.push({ what: "JS Worker that does nothing (anchor)", ...hello });

  const d1Dir = tempDir("twill-bench-d1-");
  try {
    let rt = await start([jsWorker("d1", d1Worker, { d1Databases: { D1: "bench-d1" } })], { d1Persist: d1Dir });
    await loadData(jsSystem("d1", rt.url));
    await rt.mf.dispose();
    const d1 = await timeFresh([jsWorker("d1", d1Worker, { d1Databases: { D1: "bench-d1" } })], { d1Persist: d1Dir }, (u) => [`${u}/point?id=7`], pointOk);
    rows.push({ what: `D1 Worker, point select (${ROWS.toLocaleString("en")} rows)`, ...d1 });
  } finally {
    removeDir(d1Dir);
  }

  // The module alone: compile, instantiate and a first answer that opens no database.
  const moduleOnly = await timeFresh([engine()], {}, (u) => [`${u}/`], () => {});
  rows.push({ what: "TwillDB Edge, GET / (module only, no database)", ...moduleOnly });

  const cold = [];
  for (const mib of COLD_SIZES_MIB) {
    const dir = tempDir("twill-bench-cold-");
    try {
      let rt = await start([engine()], { r2Persist: dir });
      const q = (sql, params) => json(`${rt.url}/v1/db/cold/query`, postJson({ sql, params }));
      await q("CREATE TABLE kv (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)");
      const rowsTotal = Math.floor((mib * 1048576) / 1000);
      const loadStarted = performance.now();
      for (let from = 0; from < rowsTotal; from += 2000) {
        await q("WITH RECURSIVE s(v) AS (SELECT ? UNION ALL SELECT v + 1 FROM s WHERE v < ?) INSERT INTO kv SELECT v, randomblob(1000) FROM s", [from, Math.min(rowsTotal, from + 2000) - 1]);
      }
      const loadSeconds = (performance.now() - loadStarted) / 1000;
      // The writer goes quiet: after 1 s without commits it folds a log tail of 256 KiB or
      // more into a checkpoint (in waitUntil), so cold readers need not replay it.
      await new Promise((resolve) => setTimeout(resolve, QUIET_WAIT_MS));
      const loaded = await json(`${rt.url}/v1/db/cold/stats`);
      await rt.mf.dispose();
      const id = Math.floor(rowsTotal / 2) + 7;
      const r = await timeFresh([engine()], { r2Persist: dir }, (u) => [`${u}/v1/db/cold/query`, postJson({ sql: "SELECT length(pad) AS n FROM kv WHERE id = ?", params: [id] })], (b) => {
        if (b.rows?.[0]?.[0] !== 1000) throw new Error(`cold point query answered ${JSON.stringify(b).slice(0, 200)}`);
      });
      rows.push({ what: `TwillDB Edge, point select, ${mib} MiB database`, ...r });
      cold.push({ mib, rows: rowsTotal, loadSeconds, meta: r.body.meta, tail: loaded.applied_seq - loaded.checkpoint_seq });
    } finally {
      removeDir(dir);
    }
  }

  out("**Cold start**: a new workerd process (miniflare) on existing data, then one request. The anchor is a JS Worker that does nothing.");
  out();
  out("| Worker | runtime start ms | first answer ms | × anchor (first answer) | next answer ms |");
  out("|---|---|---|---|---|");
  for (const r of rows) {
    out(`| ${r.what} | ${r.startup.toFixed(0)} | ${r.first.toFixed(1)} | ${(r.first / hello.first).toFixed(1)} | ${r.warm.toFixed(1)} |`);
    chartPoint("cold-start", "runtime start", r.what, r.startup);
    chartPoint("cold-start", "first answer", r.what, r.first);
  }
  const slowest = rows.filter((r) => r.what.startsWith("TwillDB Edge, point select")).reduce((a, b) => (b.first > a.first ? b : a));
  target("cold start: first answer ≤ 60 ms (a new workerd process, then one point select)", `${slowest.first.toFixed(0)} ms (${slowest.what.replace("TwillDB Edge, point select, ", "")}; the module alone ${moduleOnly.first.toFixed(0)} ms)`, slowest.first <= 60);
  out();
  out("**R2 cost of the first point query on a cold isolate** (the engine's own counters, from the answer's `meta`; 1,000-byte rows, " +
      "4 KiB pages, page groups of 64 KiB):");
  out();
  out(`The load ends, then the bench waits ${QUIET_WAIT_MS / 1000} s: a writer quiet for 1 s folds a log tail of 256 KiB or more into a checkpoint.`);
  out("Log records still after the last checkpoint are replayed when the database opens: one GET each, and their bytes.");
  out();
  out("| database | rows | log records after the checkpoint | R2 reads | R2 bytes read | load time s (HTTP, 2,000 rows per request) |");
  out("|---|---|---|---|---|---|");
  for (const c of cold) {
    out(`| ${c.mib} MiB | ${c.rows.toLocaleString("en")} | ${c.tail} | ${c.meta.r2_reads} | ${c.meta.r2_bytes_read.toLocaleString("en")} | ${c.loadSeconds.toFixed(1)} |`);
  }
  out();
  const biggest = cold[cold.length - 1];
  target(`cold point query on a ${biggest.mib} MiB database: ≤ 4 R2 reads and ≤ 1 MiB`,
    `${biggest.meta.r2_reads} reads, ${(biggest.meta.r2_bytes_read / 1048576).toFixed(2)} MiB`,
    biggest.meta.r2_reads <= 4 && biggest.meta.r2_bytes_read <= 1048576);
}

// TWILL_BENCH_ONLY=<section> runs one section (throughput, memory, interactive, cold).
const ONLY = process.env.TWILL_BENCH_ONLY;
const sections = [
  ["throughput", "In the Worker (workerd via miniflare)", throughput],
  ["memory", "Memory", memory],
  ["interactive", "Interactive transactions", interactive],
  ["cold", "Cold start (Exp 5)", coldStart],
];
for (const [key, title, run] of sections) {
  if (ONLY && ONLY !== key) continue;
  out(`### ${title}`);
  out();
  await run();
}
