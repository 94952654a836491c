#!/usr/bin/env node
// twill: TwillDB Edge from a terminal. Brings SQLite files and SQL dumps in and out, forks,
// restores, shows history, lists, describes and deletes databases, against a Worker's URL
// and token (--url/--token, or TWILL_URL/TWILL_TOKEN). Run `npx twill --help`.
import { createReadStream, createWriteStream, statSync } from "node:fs";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import { parseArgs } from "node:util";

/** Bodies above this go up as an upload session (a Worker request body holds at most 100 MB). */
const ONE_REQUEST_MAX_BYTES = 90 * 1024 * 1024;
/** Each part of an upload session (a multiple of 256 KiB, at most 96 MiB). */
const PART_BYTES = 64 * 1024 * 1024;
/** Attempts per part before the import stops (it can be resumed with --resume). */
const PART_ATTEMPTS = 4;

const COMMON = `Common options:
  --url <url>      the Worker, e.g. https://db.example.com (or TWILL_URL)
  --token <token>  a bearer token (or TWILL_TOKEN)
  --json           print the server's JSON answer instead of a summary
  -h, --help       this help`;

const COMMANDS = {
  ls: {
    usage: "twill ls [--deleted] [--limit <n>]",
    about: "Lists the databases (all pages). --deleted includes deleted ones still in their history window.",
    options: { deleted: { type: "boolean" }, limit: { type: "string" } },
    run: list,
  },
  info: {
    usage: "twill info <db>",
    about: "Size, newest commit (bookmark), checkpoint, history window, parents, deletion.",
    options: {},
    run: info,
  },
  history: {
    usage: "twill history <db> [--at <time>]",
    about: "The history window; with --at (RFC 3339 or ms since the epoch) the bookmark of the last commit then.",
    options: { at: { type: "string" } },
    run: history,
  },
  export: {
    usage: "twill export <db> <file | -> [--as-of <bookmark | time>] [--format sqlite|sql]",
    about: "Writes a consistent SQLite file (or a SQL dump) of the newest or a past commit, with a progress bar.",
    options: { "as-of": { type: "string" }, format: { type: "string" } },
    run: exportDb,
  },
  import: {
    usage: "twill import <db> <file> [--replace] [--part-mib <n>] [--resume <upload id>]",
    about:
      "Makes a SQLite file (.db, or .gz compressed) or a SQL dump (.sql) the database's state, as one commit.\n" +
      "Files over 90 MiB go up in parts of 64 MiB (--part-mib: 1 to 96, and any file goes up in parts);\n" +
      "a failed part is retried, and an import that still fails prints the --resume id that finishes it.\n" +
      "A database that holds tables is refused unless --replace (the state before stays restorable).",
    options: { replace: { type: "boolean" }, resume: { type: "string" }, "part-mib": { type: "string" } },
    run: importDb,
  },
  fork: {
    usage: "twill fork <db> <new db> [--bookmark <b> | --time <t>]",
    about: "Creates <new db> as the state of <db> at a commit (default: the newest), sharing its storage.",
    options: { bookmark: { type: "string" }, time: { type: "string" } },
    run: fork,
  },
  restore: {
    usage: "twill restore <db> (--bookmark <b> | --time <t>)",
    about: "Makes a past commit's state the current one, as a new commit (the answer says how to undo it).",
    options: { bookmark: { type: "string" }, time: { type: "string" } },
    run: restore,
  },
  rm: {
    usage: "twill rm <db> [--purge --yes]",
    about:
      "Deletes the database: empty at once, restorable until its history window ends.\n" +
      "--purge also ends its history and deletes its objects now (needs --yes).",
    options: { purge: { type: "boolean" }, yes: { type: "boolean" } },
    run: remove,
  },
};

class CliError extends Error {}

function mainHelp() {
  const lines = Object.values(COMMANDS).map((c) => `  ${c.usage}`);
  return `twill: TwillDB Edge from a terminal\n\nCommands:\n${lines.join("\n")}\n\n${COMMON}\n\n` +
    "`twill <command> --help` says more about each.";
}

async function main(argv) {
  const [name, ...rest] = argv;
  if (!name || name === "-h" || name === "--help" || name === "help") {
    console.log(mainHelp());
    return;
  }
  const command = COMMANDS[name];
  if (!command) throw new CliError(`no command ${JSON.stringify(name)}\n\n${mainHelp()}`);
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      url: { type: "string" },
      token: { type: "string" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
      ...command.options,
    },
  });
  if (values.help) {
    console.log(`${command.usage}\n\n${command.about}\n\n${COMMON}`);
    return;
  }
  const url = (values.url ?? process.env.TWILL_URL ?? "").replace(/\/+$/, "");
  if (!url) throw new CliError("give the Worker's URL: --url <url> or TWILL_URL");
  const server = new Server(url, values.token ?? process.env.TWILL_TOKEN);
  await command.run(server, positionals, values);
}

/** The Worker's HTTP API. */
class Server {
  constructor(url, token) {
    this.url = url;
    this.token = token;
  }

  headers(extra = {}) {
    return { ...(this.token ? { authorization: `Bearer ${this.token}` } : {}), ...extra };
  }

  async raw(path, init = {}) {
    return fetch(`${this.url}${path}`, { ...init, headers: this.headers(init.headers) });
  }

  /** A JSON call; a non-2xx answer becomes a CliError with the server's code and message. */
  async call(path, { method = "GET", body, headers, duplex } = {}) {
    const res = await this.raw(path, { method, body, headers, duplex });
    return answerOf(res);
  }
}

async function answerOf(res) {
  const text = await res.text();
  let answer;
  try {
    answer = JSON.parse(text);
  } catch {
    throw new CliError(`HTTP ${res.status}: ${text.slice(0, 300)}`);
  }
  if (!res.ok) {
    const e = answer?.error;
    throw new CliError(e ? `${e.code}: ${e.message}` : `HTTP ${res.status}`);
  }
  return answer;
}

const json = (body) => ({ body: JSON.stringify(body), headers: { "content-type": "application/json" } });

function database(positionals, index = 0, what = "<db>") {
  const name = positionals[index];
  if (!name) throw new CliError(`missing ${what}`);
  return encodeURIComponent(name);
}

function print(values, answer, summary) {
  console.log(values.json ? JSON.stringify(answer, null, 2) : summary);
}

const time = (ms) => (ms ? new Date(ms).toISOString() : "-");

function size(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = bytes;
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return `${u === 0 ? n : n.toFixed(1)} ${units[u]}`;
}

/** A progress line on stderr: bytes, share of the total, rate. Redrawn in place on a
 * terminal; elsewhere printed every few seconds so logs stay short. */
class Progress {
  constructor(label, total) {
    this.label = label;
    this.total = total;
    this.done = 0;
    this.started = Date.now();
    this.shown = 0;
    this.tty = process.stderr.isTTY;
  }

  add(bytes) {
    this.done += bytes;
    const now = Date.now();
    if (now - this.shown >= (this.tty ? 100 : 5000)) {
      this.shown = now;
      this.draw(false);
    }
  }

  line() {
    const seconds = Math.max((Date.now() - this.started) / 1000, 0.001);
    const rate = `${size(this.done / seconds)}/s`;
    if (!this.total) return `${this.label} ${size(this.done)} ${rate}`;
    const share = Math.min(this.done / this.total, 1);
    const width = 24;
    const bar = "#".repeat(Math.round(share * width)).padEnd(width, "-");
    return `${this.label} [${bar}] ${(share * 100).toFixed(0).padStart(3)}% ${size(this.done)} of ${size(this.total)} ${rate}`;
  }

  draw(final) {
    if (this.tty) process.stderr.write(`\r${this.line()}\x1b[K${final ? "\n" : ""}`);
    else process.stderr.write(`${this.line()}\n`);
  }

  finish() {
    this.draw(true);
  }
}

/** Counts the bytes that pass through into `progress`. */
async function* counted(source, progress) {
  for await (const chunk of source) {
    progress.add(chunk.length);
    yield chunk;
  }
}

async function list(server, _positionals, values) {
  const all = [];
  let after = null;
  const limit = values.limit ?? "200";
  do {
    const query = new URLSearchParams({ limit });
    if (values.deleted) query.set("deleted", "true");
    if (after) query.set("after", after);
    const page = await server.call(`/v1/db?${query}`);
    all.push(...page.databases);
    after = page.next;
  } while (after);
  const rows = all.map((d) =>
    [d.name, size(d.checkpoint_bytes), time(d.checkpoint.time_ms), d.deleted ? `deleted ${time(d.deleted.time_ms)}` : ""].join("\t"),
  );
  print(values, { databases: all }, all.length ? ["name\tsize at checkpoint\tcheckpoint\t", ...rows].join("\n") : "no databases");
}

async function info(server, positionals, values) {
  const d = await server.call(`/v1/db/${database(positionals)}`);
  const lines = [
    `${d.name}: ${size(d.size_bytes)} (${d.page_count} pages of ${d.page_size} bytes)`,
    `newest commit  ${d.bookmark} at ${time(d.history.head_ms)}`,
    `history        ${d.history.from} (${time(d.history.from_ms)}) to ${d.history.head}; kept ${d.history_retention_ms / 3600000} h`,
    `checkpoint     ${d.checkpoint.bookmark} at ${time(d.checkpoint.time_ms)}, generation ${d.checkpoint.generation}, ${d.checkpoint.log_records_since} commits since`,
  ];
  if (d.forked_from) lines.push(`forked from    ${d.forked_from.database} at ${d.forked_from.bookmark}`);
  if (d.deleted) lines.push(`deleted        at ${time(d.deleted.time_ms)}; undo: twill restore ${d.name} --bookmark ${d.deleted.restore.bookmark}`);
  print(values, d, lines.join("\n"));
}

async function history(server, positionals, values) {
  const at = values.at ? `?at=${encodeURIComponent(values.at)}` : "";
  const h = await server.call(`/v1/db/${database(positionals)}/history${at}`);
  const w = h.window;
  const lines = [`history from ${w.from} (${time(w.from_ms)}) to ${w.head} (${time(w.head_ms)})`];
  if (h.bookmark) lines.push(`at ${values.at}: ${h.bookmark}`);
  print(values, h, lines.join("\n"));
}

async function exportDb(server, positionals, values) {
  const db = database(positionals);
  const target = positionals[1];
  if (!target) throw new CliError("missing <file> (or - for standard output)");
  const format = values.format ?? (target.endsWith(".sql") ? "sql" : "sqlite");
  if (!["sql", "sqlite"].includes(format)) throw new CliError("--format is sqlite or sql");
  const query = new URLSearchParams();
  if (values["as-of"]) query.set("as_of", values["as-of"]);
  if (format === "sql") query.set("format", "sql");
  const res = await server.raw(`/v1/db/${db}/export${query.size ? `?${query}` : ""}`);
  if (!res.ok) await answerOf(res);
  const total = Number(res.headers.get("content-length")) || 0;
  const progress = new Progress("export", total);
  const out = target === "-" ? process.stdout : createWriteStream(target);
  await pipeline(Readable.fromWeb(res.body), (source) => counted(source, progress), out);
  progress.finish();
  const bookmark = res.headers.get("x-twill-bookmark");
  if (target !== "-") console.log(values.json ? JSON.stringify({ bytes: progress.done, bookmark }) : `${target}: ${size(progress.done)} of commit ${bookmark}`);
}

/** What the file is, by its name: a SQL dump, gzip-compressed or not. */
function fileKind(file) {
  const gzip = file.endsWith(".gz");
  const base = gzip ? file.slice(0, -3) : file;
  return { gzip, sql: base.endsWith(".sql") };
}

async function importDb(server, positionals, values) {
  const db = database(positionals);
  const file = positionals[1];
  if (!file) throw new CliError("missing <file>");
  const bytes = statSync(file).size;
  const kind = fileKind(file);
  let answer;
  if (values.resume || values["part-mib"] || (bytes > ONE_REQUEST_MAX_BYTES && !kind.sql)) {
    answer = await importInParts(server, db, file, bytes, kind, values);
  } else {
    const progress = new Progress("import", bytes);
    const headers = { "content-type": kind.sql ? "application/sql" : "application/vnd.sqlite3" };
    if (kind.gzip) headers["content-encoding"] = "gzip";
    const body = Readable.toWeb(Readable.from(counted(createReadStream(file), progress)));
    const replace = values.replace ? "?replace=true" : "";
    answer = await server.call(`/v1/db/${db}/import${replace}`, { method: "PUT", body, headers, duplex: "half" });
    progress.finish();
  }
  print(values, answer, `${decodeURIComponent(db)}: imported ${size(answer.bytes)} (${answer.pages} pages) as commit ${answer.bookmark}; undo: --bookmark ${answer.previous}`);
}

/** Reads `stream` in pieces of exactly `part` bytes (the last may be shorter). */
async function* parts(stream, part) {
  let pending = [];
  let held = 0;
  for await (const chunk of stream) {
    let piece = chunk;
    while (piece.length > 0) {
      const take = Math.min(part - held, piece.length);
      pending.push(piece.subarray(0, take));
      held += take;
      piece = piece.subarray(take);
      if (held === part) {
        yield Buffer.concat(pending);
        pending = [];
        held = 0;
      }
    }
  }
  if (held > 0) yield Buffer.concat(pending);
}

/** An import as an upload session: parts one at a time (each retried), then completion.
 * With --resume, the parts the session already holds are skipped. */
async function importInParts(server, db, file, bytes, kind, values) {
  if (kind.sql) throw new CliError("SQL dumps import in one request (at most 90 MiB); upload sessions take SQLite files");
  let session;
  const stored = new Set();
  if (values.resume) {
    session = await server.call(`/v1/db/${db}/uploads/${encodeURIComponent(values.resume)}`);
    if (session.state !== "open") throw new CliError(`upload ${values.resume} is ${session.state}, not open`);
    for (const p of session.parts) stored.add(p.part);
  } else {
    const mib = Number(values["part-mib"] ?? PART_BYTES / 1048576);
    if (!Number.isInteger(mib) || mib < 1 || mib > 96) throw new CliError("--part-mib is a whole number of MiB from 1 to 96");
    session = await server.call(`/v1/db/${db}/uploads`, { method: "POST", ...json({ part_bytes: mib * 1048576, replace: !!values.replace }) });
  }
  const id = session.upload;
  const progress = new Progress("import", kind.gzip ? 0 : bytes);
  const source = kind.gzip ? createReadStream(file).pipe(createGunzip()) : createReadStream(file);
  let count = 0;
  for await (const part of parts(source, session.part_bytes)) {
    const number = count++;
    if (!stored.has(number)) await sendPart(server, db, id, number, part);
    progress.add(part.length);
  }
  progress.finish();
  return server.call(`/v1/db/${db}/uploads/${id}/complete`, { method: "POST", ...json({ parts: count }) });
}

async function sendPart(server, db, id, number, part) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await server.call(`/v1/db/${db}/uploads/${id}/${number}`, {
        method: "PUT",
        body: part,
        headers: { "content-type": "application/octet-stream" },
      });
    } catch (e) {
      const permanent = e instanceof CliError && /^(UPLOAD_CONFLICT|UPLOAD_NOT_FOUND|UPLOAD_EXPIRED|LIMIT_EXCEEDED|UNAUTHORIZED|FORBIDDEN|READ_ONLY)/.test(e.message);
      if (permanent || attempt >= PART_ATTEMPTS) {
        throw new CliError(`part ${number} failed (${e.message}); resume with: twill import ${decodeURIComponent(db)} <file> --resume ${id}`);
      }
      await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
    }
  }
}

function point(values, required) {
  if (values.bookmark && values.time) throw new CliError("give --bookmark or --time, not both");
  if (values.bookmark) return { bookmark: values.bookmark };
  if (values.time) return { time: /^\d+$/.test(values.time) ? Number(values.time) : values.time };
  if (required) throw new CliError("name the commit: --bookmark <b> or --time <t>");
  return {};
}

async function fork(server, positionals, values) {
  const db = database(positionals);
  const to = positionals[1];
  if (!to) throw new CliError("missing <new db>");
  const f = await server.call(`/v1/db/${db}/fork`, { method: "POST", ...json({ to, ...point(values, false) }) });
  print(values, f, `${f.database}: forked from ${decodeURIComponent(db)} at ${f.from}`);
}

async function restore(server, positionals, values) {
  const db = database(positionals);
  const r = await server.call(`/v1/db/${db}/restore`, { method: "POST", ...json(point(values, true)) });
  print(values, r, `${decodeURIComponent(db)}: restored ${r.restored} as commit ${r.bookmark}; undo: twill restore ${decodeURIComponent(db)} --bookmark ${r.previous}`);
}

async function remove(server, positionals, values) {
  const db = database(positionals);
  if (values.purge && !values.yes) throw new CliError("--purge deletes the history too, with no way back: add --yes");
  const d = await server.call(`/v1/db/${db}${values.purge ? "?purge=true" : ""}`, { method: "DELETE" });
  const name = decodeURIComponent(db);
  const summary = d.purge
    ? `${name}: deleted and purged (${d.purge.objects_deleted} objects${d.purge.complete ? "" : "; not finished: run it again"})`
    : `${name}: deleted; undo: twill restore ${name} --bookmark ${d.previous}`;
  print(values, d, summary);
}

main(process.argv.slice(2)).catch((e) => {
  console.error(`twill: ${e instanceof CliError ? e.message : e?.stack ?? e}`);
  process.exit(1);
});
