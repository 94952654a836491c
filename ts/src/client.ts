// A D1-compatible client for TwillDB Edge: `prepare(sql).bind(...).first/all/run/raw`,
// `batch([...])` (atomic) and `exec(sql)`, with results shaped like D1's. It talks to the
// database over a service binding (RPC) or over HTTP; code written for D1 can switch by
// changing where its database object comes from.
//
// Differences from D1, on purpose: integers beyond ±(2^53 − 1) come back as `bigint`
// (D1 rounds them to the nearest double), and errors carry a `code`.

/** A value bound to a statement. Integers beyond 2^53 must be `bigint`; booleans bind as 1/0. */
export type SqlValue = null | number | bigint | string | boolean | Uint8Array | ArrayBuffer;
/** A value in a result row. Blobs come back as arrays of byte values, as in D1. */
export type ResultValue = null | number | bigint | string | number[];

/** A statement's raw result, as both transports deliver it. */
export interface RawResult {
  columns: string[];
  rows: unknown[][];
  rows_affected: number;
  rows_read: number;
  rows_written: number;
  last_insert_rowid: number | bigint | null;
  meta?: RawMeta;
}

/** Counters the server reports for a request. */
export interface RawMeta {
  duration_ms: number;
  rows_read: number;
  rows_written: number;
  r2_reads: number;
  r2_writes: number;
  r2_bytes_read: number;
  r2_bytes_written: number;
  cache_hits: number;
  cache_misses: number;
  [key: string]: unknown;
}

type Failure = { error: { code: string; message: string; sqlite_code?: string } };

/** Per-request options: a session's bookmark (answer from a state at or after it), or
 * `as_of`: read the state after a past commit (bookmark or time) instead. */
export interface RequestOptions {
  bookmark?: string;
  as_of?: string;
}

/** A commit, by bookmark or by time (RFC 3339 or ms since the epoch: the last commit then). */
export type HistoryPoint = { bookmark: string } | { time: string | number };

/** The commits that can be read, restored and forked, and (when asked by time) one of them. */
export interface HistoryAnswer {
  window: { from: string; from_ms: number; head: string; head_ms: number };
  bookmark?: string;
}

export interface RestoreAnswer {
  restored: string;
  /** The state before the restore: restore it to undo the restore. */
  previous: string;
  bookmark: string;
}

export interface DeleteAnswer {
  deleted: string;
  /** The deletion's commit: the database is empty there. */
  bookmark: string;
  /** The state before the deletion: restore it to undo the deletion (within the history
   * window; never after a purge). */
  previous: string;
  /** False if the deletion is not yet published to listings (the database is empty anyway). */
  published: boolean;
  /** With `purge`: what the purge deleted; `complete: false` if it stopped at its call
   * budget (delete again to finish it). */
  purge?: { objects_deleted: number; chunks_kept_for_forks: number; complete: boolean; log_records_left: boolean };
}

/** What a database is now (`GET /v1/db/{name}`). */
export interface DatabaseInfo {
  name: string;
  size_bytes: number;
  page_size: number;
  page_count: number;
  bookmark: string;
  history: { from: string; from_ms: number; head: string; head_ms: number };
  history_retention_ms: number;
  checkpoint: { generation: number; bookmark: string; time_ms: number; log_records_since: number; log_bytes_since: number };
  /** The database and commit this one was forked from (null if it was not). */
  forked_from: { database: string; bookmark: string } | null;
  /** Set while the database is deleted: restore `restore.bookmark` to undo it. */
  deleted?: { bookmark: string; time_ms: number; restore: { bookmark: string } };
}

export interface ForkAnswer {
  database: string;
  from: string;
  bookmark: string;
}

/** How the client reaches the database: the Worker's RPC methods or its HTTP API. */
export interface Transport {
  query(database: string, sql: string, params?: SqlValue[], options?: RequestOptions): Promise<RawResult | Failure>;
  batch(
    database: string,
    statements: { sql: string; params?: SqlValue[] }[],
    options?: RequestOptions,
  ): Promise<{ results: RawResult[]; meta: RawMeta } | Failure>;
  exec(database: string, sql: string, options?: RequestOptions): Promise<{ count: number; duration: number; meta?: RawMeta } | Failure>;
  history(database: string, at?: string | number): Promise<HistoryAnswer | Failure>;
  restore(database: string, point: HistoryPoint): Promise<RestoreAnswer | Failure>;
  fork(database: string, request: { to: string } & Partial<{ bookmark: string; time: string | number }>): Promise<ForkAnswer | Failure>;
  delete(database: string, options?: { purge?: boolean }): Promise<DeleteAnswer | Failure>;
  info(database: string): Promise<DatabaseInfo | Failure>;
}

/** A database error, with the server's code (e.g. SQL_ERROR, LIMIT_EXCEEDED, READ_ONLY)
 * and, for SQL errors, SQLite's result code (e.g. SQLITE_CONSTRAINT_UNIQUE). */
export class TwillError extends Error {
  readonly code: string;
  readonly status?: number;
  readonly sqliteCode?: string;
  constructor(code: string, message: string, status?: number, sqliteCode?: string) {
    super(`${code}: ${message}`);
    this.name = "TwillError";
    this.code = code;
    this.status = status;
    this.sqliteCode = sqliteCode;
  }
}

/** D1's meta, plus TwillDB's storage counters under `twill`. */
export interface D1Meta {
  duration: number;
  changes: number;
  last_row_id: number | bigint;
  rows_read: number;
  rows_written: number;
  changed_db: boolean;
  size_after: number;
  twill?: RawMeta;
}

export interface D1Result<T = Record<string, ResultValue>> {
  success: true;
  results: T[];
  meta: D1Meta;
}

export interface D1ExecResult {
  count: number;
  duration: number;
}

function unwrap<T>(answer: T | Failure): T {
  if (answer !== null && typeof answer === "object" && "error" in answer) {
    const { code, message, sqlite_code } = (answer as Failure).error;
    throw new TwillError(code, message, undefined, sqlite_code);
  }
  return answer as T;
}

function resultValue(v: unknown): ResultValue {
  if (v instanceof Uint8Array) return Array.from(v);
  return v as ResultValue;
}

function toD1<T>(raw: RawResult, meta: RawMeta | undefined): D1Result<T> {
  const results = raw.rows.map((row) => {
    const object: Record<string, ResultValue> = {};
    raw.columns.forEach((c, i) => (object[c] = resultValue(row[i])));
    return object as T;
  });
  return {
    success: true,
    results,
    meta: {
      duration: meta?.duration_ms ?? 0,
      changes: raw.rows_affected,
      last_row_id: raw.last_insert_rowid ?? 0,
      rows_read: raw.rows_read,
      rows_written: raw.rows_written,
      changed_db: raw.rows_written > 0,
      size_after: 0,
      twill: meta,
    },
  };
}

export class TwillPreparedStatement {
  constructor(
    private readonly db: TwillDatabase,
    readonly sql: string,
    readonly params: SqlValue[] = [],
  ) {}

  /** A copy with these values bound to `?`/`?NNN` in order (as D1's bind). */
  bind(...values: SqlValue[]): TwillPreparedStatement {
    return new TwillPreparedStatement(this.db, this.sql, values);
  }

  private async raw_(): Promise<RawResult> {
    const raw = unwrap(await this.db.transport.query(this.db.name, this.sql, this.params, this.db.requestOptions()));
    this.db.observe(raw.meta);
    return raw;
  }

  async all<T = Record<string, ResultValue>>(): Promise<D1Result<T>> {
    const raw = await this.raw_();
    return toD1<T>(raw, raw.meta);
  }

  async run<T = Record<string, ResultValue>>(): Promise<D1Result<T>> {
    return this.all<T>();
  }

  /** The first row (or one column of it), or null when there are no rows. */
  async first<T = Record<string, ResultValue>>(column?: string): Promise<T | null> {
    const raw = await this.raw_();
    if (column !== undefined && !raw.columns.includes(column)) {
      throw new TwillError("COLUMN_NOT_FOUND", `no column ${JSON.stringify(column)} in the result`);
    }
    if (raw.rows.length === 0) return null;
    const row = toD1<Record<string, ResultValue>>({ ...raw, rows: [raw.rows[0]] }, raw.meta).results[0];
    return (column === undefined ? row : row[column]) as T;
  }

  /** Rows as arrays; with `columnNames: true` the first array holds the column names. */
  async raw<T = ResultValue[]>(options?: { columnNames?: boolean }): Promise<T[]> {
    const raw = await this.raw_();
    const rows = raw.rows.map((r) => r.map(resultValue)) as T[];
    return options?.columnNames ? [raw.columns as T, ...rows] : rows;
  }
}

export class TwillDatabase {
  constructor(
    readonly transport: Transport,
    readonly name: string,
  ) {}

  prepare(sql: string): TwillPreparedStatement {
    return new TwillPreparedStatement(this, sql);
  }

  /** Runs the statements as one transaction: all commit, or none do and this throws. */
  async batch<T = Record<string, ResultValue>>(statements: TwillPreparedStatement[]): Promise<D1Result<T>[]> {
    const answer = unwrap(
      await this.transport.batch(
        this.name,
        statements.map((s) => ({ sql: s.sql, params: s.params })),
        this.requestOptions(),
      ),
    );
    this.observe(answer.meta);
    return answer.results.map((r) => toD1<T>(r, answer.meta));
  }

  /** Statements separated by semicolons, without parameters, each committed as it runs. */
  async exec(sql: string): Promise<D1ExecResult> {
    const answer = unwrap(await this.transport.exec(this.name, sql, this.requestOptions()));
    this.observe(answer.meta);
    return { count: answer.count, duration: answer.duration };
  }

  /**
   * A session, as D1's `withSession`: every query is answered from a state at or after
   * the newest commit the session has seen (its own writes included), from any isolate,
   * without an R2 read where the isolate already holds that state. Start it from a
   * bookmark (`meta.twill.bookmark` of an earlier answer, or `getBookmark()` of another
   * session), or with "first-primary" (the default): the first query reads the latest.
   */
  withSession(start: string = "first-primary"): TwillSession {
    const bookmark = start === "first-primary" || start === "first-unconstrained" ? undefined : start;
    return new TwillSession(this.transport, this.name, bookmark);
  }

  /** A read-only view of the state after a past commit: a bookmark, or a time (a `Date`,
   * RFC 3339 or ms since the epoch: the last commit then). Writes through it are refused. */
  asOf(point: string | number | Date): TwillPast {
    const text = point instanceof Date ? point.toISOString() : String(point);
    return new TwillPast(this.transport, this.name, text);
  }

  /** The history window, and with `at` the bookmark of the last commit at or before it. */
  async history(at?: string | number | Date): Promise<HistoryAnswer> {
    return unwrap(await this.transport.history(this.name, at instanceof Date ? at.toISOString() : at));
  }

  /** Makes a past commit's state the current one, as a new commit (undo: restore `previous`). */
  async restore(point: HistoryPoint): Promise<RestoreAnswer> {
    return unwrap(await this.transport.restore(this.name, point));
  }

  /** Creates database `to` as the state after a commit of this one (default: the newest). */
  async fork(to: string, point?: HistoryPoint): Promise<ForkAnswer> {
    return unwrap(await this.transport.fork(this.name, { to, ...(point ?? {}) }));
  }

  /** Empties the database as one commit. Its history stays: `restore({ bookmark: previous })`
   * undoes the deletion until it leaves the history window. With `{ purge: true }` the
   * history ends there and the old objects are deleted at once (forks keep what they use).
   * The name can be used again at once, as an empty database. */
  async delete(options?: { purge?: boolean }): Promise<DeleteAnswer> {
    return unwrap(await this.transport.delete(this.name, options));
  }

  /** Size, newest commit, checkpoint, history window, fork origin and deletion. */
  async info(): Promise<DatabaseInfo> {
    return unwrap(await this.transport.info(this.name));
  }

  /** @internal Options for the next request. */
  requestOptions(): RequestOptions | undefined {
    return undefined;
  }

  /** @internal Sees an answer's meta. */
  observe(_meta: RawMeta | undefined): void {}
}

/** A database handle that carries a bookmark: read-your-writes and monotonic reads. */
export class TwillSession extends TwillDatabase {
  #bookmark: string | undefined;

  constructor(transport: Transport, name: string, bookmark?: string) {
    super(transport, name);
    this.#bookmark = bookmark;
  }

  /** The newest commit this session has seen (send it to another session to continue). */
  getBookmark(): string | null {
    return this.#bookmark ?? null;
  }

  override requestOptions(): RequestOptions | undefined {
    return this.#bookmark === undefined ? undefined : { bookmark: this.#bookmark };
  }

  override observe(meta: RawMeta | undefined): void {
    const seen = meta?.bookmark;
    // Bookmarks sort in commit order: keep the newest.
    if (typeof seen === "string" && (this.#bookmark === undefined || seen > this.#bookmark)) this.#bookmark = seen;
  }
}

/** A read-only database handle on the state after one past commit. */
export class TwillPast extends TwillDatabase {
  constructor(
    transport: Transport,
    name: string,
    readonly point: string,
  ) {
    super(transport, name);
  }

  override requestOptions(): RequestOptions | undefined {
    return { as_of: this.point };
  }
}

/** The engine Worker's RPC methods, as seen through a service binding. */
export interface TwillBinding {
  query(database: string, sql: string, params?: SqlValue[], options?: RequestOptions): Promise<unknown>;
  batch(database: string, statements: { sql: string; params?: SqlValue[] }[], options?: RequestOptions): Promise<unknown>;
  exec(database: string, sql: string, options?: RequestOptions): Promise<unknown>;
  history(database: string, at?: string | number): Promise<unknown>;
  restore(database: string, point: HistoryPoint): Promise<unknown>;
  fork(database: string, request: { to: string } & Partial<{ bookmark: string; time: string | number }>): Promise<unknown>;
  delete(database: string, options?: { purge?: boolean }): Promise<unknown>;
  info(database: string): Promise<unknown>;
}

/** Database `name` through a service binding to the TwillDB Edge Worker. */
export function fromBinding(binding: TwillBinding, name: string): TwillDatabase {
  const transport: Transport = {
    query: async (db, sql, params, options) => (await binding.query(db, sql, params, options)) as RawResult | Failure,
    batch: async (db, statements, options) =>
      (await binding.batch(db, statements, options)) as { results: RawResult[]; meta: RawMeta },
    exec: async (db, sql, options) => (await binding.exec(db, sql, options)) as { count: number; duration: number },
    history: async (db, at) => (await binding.history(db, at)) as HistoryAnswer | Failure,
    restore: async (db, point) => (await binding.restore(db, point)) as RestoreAnswer | Failure,
    fork: async (db, request) => (await binding.fork(db, request)) as ForkAnswer | Failure,
    delete: async (db, options) => (await binding.delete(db, options)) as DeleteAnswer | Failure,
    info: async (db) => (await binding.info(db)) as DatabaseInfo | Failure,
  };
  return new TwillDatabase(transport, name);
}

function toWire(v: SqlValue): unknown {
  if (typeof v === "bigint") return { int: v.toString() };
  if (typeof v === "number" && !Number.isFinite(v)) {
    if (Number.isNaN(v)) return null;
    return { real: v > 0 ? "Infinity" : "-Infinity" };
  }
  if (v instanceof ArrayBuffer) v = new Uint8Array(v);
  if (v instanceof Uint8Array) {
    let binary = "";
    for (const b of v) binary += String.fromCharCode(b);
    return { base64: btoa(binary) };
  }
  return v;
}

function fromWire(v: unknown): unknown {
  if (v === null || typeof v !== "object") return v;
  const o = v as Record<string, string>;
  if ("int" in o) return BigInt(o.int);
  if ("base64" in o) return Uint8Array.from(atob(o.base64), (c) => c.charCodeAt(0));
  if ("real" in o) return o.real.startsWith("-") ? -Infinity : Infinity;
  return v;
}

function fromWireResult(r: any): RawResult {
  return {
    columns: r.columns,
    rows: r.rows.map((row: unknown[]) => row.map(fromWire)),
    rows_affected: r.rows_affected,
    rows_read: r.rows_read,
    rows_written: r.rows_written,
    last_insert_rowid: fromWire(r.last_insert_rowid) as number | bigint | null,
    meta: r.meta,
  };
}

/** Database `name` over TwillDB Edge's HTTP API at `url` (e.g. https://db.example.com). */
export function overHttp(
  url: string,
  name: string,
  options: { token?: string; fetch?: typeof fetch } = {},
): TwillDatabase {
  const doFetch = options.fetch ?? fetch;
  const base = url.replace(/\/+$/, "");
  async function call(path: string, body: unknown, request?: RequestOptions, method?: string): Promise<any> {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (options.token) headers.authorization = `Bearer ${options.token}`;
    if (request?.bookmark) headers["x-twill-bookmark"] = request.bookmark;
    if (request?.as_of) headers["x-twill-as-of"] = request.as_of;
    const suffix = path === "" || path.startsWith("?") ? path : `/${path}`;
    const res = await doFetch(`${base}/v1/db/${encodeURIComponent(name)}${suffix}`, {
      method: method ?? (body === undefined ? "GET" : "POST"),
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer: any = await res.json();
    if (!res.ok) {
      throw new TwillError(
        answer?.error?.code ?? "HTTP_ERROR",
        answer?.error?.message ?? `HTTP ${res.status}`,
        res.status,
        answer?.error?.sqlite_code,
      );
    }
    return answer;
  }
  const transport: Transport = {
    async query(_db, sql, params, request) {
      return fromWireResult(await call("query", { sql, params: (params ?? []).map(toWire) }, request));
    },
    async batch(_db, statements, request) {
      const answer = await call(
        "batch",
        { statements: statements.map((s) => ({ sql: s.sql, params: (s.params ?? []).map(toWire) })) },
        request,
      );
      return {
        meta: answer.meta,
        results: answer.results.map(fromWireResult),
      };
    },
    async exec(_db, sql, request) {
      const answer = await call("exec", { sql }, request);
      return { count: answer.count, duration: answer.duration, meta: answer.meta };
    },
    history: (_db, at) => call(at === undefined ? "history" : `history?at=${encodeURIComponent(String(at))}`, undefined),
    restore: (_db, point) => call("restore", point),
    fork: (_db, request) => call("fork", request),
    delete: (_db, options) => call(options?.purge ? "?purge=true" : "", undefined, undefined, "DELETE"),
    info: () => call("", undefined),
  };
  return new TwillDatabase(transport, name);
}
