//! The TwillDB Edge Worker: HTTP routing in front of engine-core, durable in R2.
//!
//! Routes:
//! * `POST /v1/db/{name}/query`: one statement, `{"sql", "params"}`.
//! * `POST /v1/db/{name}/batch`: `{"statements": [...]}`, all in one transaction.
//! * `GET /v1/db/{name}/stats`: replication and cache figures of this isolate.
//! * `GET /`: a short description of the service.
//!
//! Settings (Worker vars, all optional): `TWILL_CACHE_BYTES`, `TWILL_CHECKPOINT_RECORDS`,
//! `TWILL_CHECKPOINT_BYTES`, `TWILL_GC_RETENTION_MS`, `TWILL_MAX_STALENESS_MS`, `TWILL_MAX_VM_STEPS`,
//! `TWILL_EMULATE_R2_LATENCY_MS` (local runs only). A request may
//! lower or raise its own staleness bound with the `x-twill-max-staleness-ms` header.

mod auth;
pub mod hrana;
mod registry;
mod rpc;
pub mod wire;

use engine_core::cache::DEFAULT_CACHE_BYTES;
use engine_core::guard::StatementKind;
use engine_core::script::{Action, Script, Step, StepOutcome};
use engine_core::{DbConfig, Done, Reply, Work};
use serde_json::{json, Value};
use wire::{result_to_json, validate_db_name, ApiError, LIMITS};
use worker::{event, Context, Env, Method, Request, Response};

/// The R2 binding holding every database.
const BUCKET_BINDING: &str = "BUCKET";

/// The clock std reads on wasm32 (see scripts/patch-wasm-std-time.py): without it std's
/// `Instant::now`/`SystemTime::now` panic, and turso_core calls them (its temp database,
/// `datetime('now')`).
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn __twill_wasm_now_ms() -> f64 {
    js_sys::Date::now()
}

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let started = js_sys::Date::now();
    let answer = route(&mut req, &env, started).await;
    let hrana_route = req.url().map(|u| is_hrana_path(u.path())).unwrap_or(false);
    let (status, body, timing) = match answer {
        Ok((body, timing)) => (200, body, timing),
        Err(e) if hrana_route => (e.status, e.hrana_body(), None),
        Err(e) => (e.status, e.body(), None),
    };
    let elapsed = js_sys::Date::now() - started;
    let mut resp = Response::from_json(&body)?.with_status(status);
    let headers = resp.headers_mut();
    let server_timing = match timing {
        Some(t) => format!("total;dur={elapsed}, {t}"),
        None => format!("total;dur={elapsed}"),
    };
    headers.set("Server-Timing", &server_timing)?;
    headers.set("Cache-Control", "no-store")?;
    Ok(resp)
}

enum Endpoint {
    Query,
    Batch,
    Exec,
    Stats,
    /// `GET .../v2` or `.../v3`: Hrana version probe.
    HranaVersion(u8),
    /// `POST .../v2/pipeline` or `.../v3/pipeline`.
    HranaPipeline,
}

/// Header naming how stale (in ms) a read-only answer may be; 0 (the default) means it
/// reflects every commit acknowledged before the request began.
const STALENESS_HEADER: &str = "x-twill-max-staleness-ms";

fn env_number(env: &Env, name: &str) -> Option<f64> {
    env.var(name).ok().and_then(|v| v.to_string().trim().parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0)
}

fn db_config(env: &Env) -> DbConfig {
    let mut c = DbConfig::default();
    if let Some(v) = env_number(env, "TWILL_CHECKPOINT_RECORDS") {
        c.checkpoint_records = v as u64;
    }
    if let Some(v) = env_number(env, "TWILL_CHECKPOINT_BYTES") {
        c.checkpoint_bytes = v as u64;
    }
    if let Some(v) = env_number(env, "TWILL_GC_RETENTION_MS") {
        c.gc_retention_ms = v;
    }
    if let Some(v) = env_number(env, "TWILL_MAX_STALENESS_MS") {
        c.max_staleness_ms = v;
    }
    if let Some(v) = env_number(env, "TWILL_MAX_VM_STEPS") {
        c.limits.max_vm_steps = v as u64;
    }
    c
}

fn not_found(message: String) -> ApiError {
    ApiError { status: 404, code: "NOT_FOUND", message }
}

/// Finds the endpoint and database a path names.
fn endpoint<'a>(segments: &[&'a str], path: &str) -> Result<(&'a str, Endpoint), ApiError> {
    Ok(match segments {
        ["v1", "db", "v2" | "v3" | "v3-protobuf", ..] if segments.len() <= 4 => {
            return Err(not_found(
                "a libSQL client URL must name the database and end with '/': http://<host>/v1/db/<name>/".into(),
            ))
        }
        ["v1", "db", name, "query"] => (*name, Endpoint::Query),
        ["v1", "db", name, "batch"] => (*name, Endpoint::Batch),
        ["v1", "db", name, "exec"] => (*name, Endpoint::Exec),
        ["v1", "db", name, "stats"] => (*name, Endpoint::Stats),
        ["v1", "db", name, "v2"] => (*name, Endpoint::HranaVersion(2)),
        ["v1", "db", name, "v3"] => (*name, Endpoint::HranaVersion(3)),
        ["v1", "db", name, "v2" | "v3", "pipeline"] => (*name, Endpoint::HranaPipeline),
        ["v1", "db", _, "v3-protobuf", ..] => {
            return Err(not_found("Hrana's protobuf encoding is not supported; use JSON (v2 or v3)".into()))
        }
        ["v1", "db", _, "v3", "cursor"] => {
            return Err(not_found("Hrana cursors are not supported; use v3/pipeline".into()))
        }
        _ => return Err(not_found(format!("no route for {path}"))),
    })
}

/// True for Hrana routes, whose errors are shaped `{"message", "code"}` for libSQL clients.
fn is_hrana_path(path: &str) -> bool {
    path.split('/').any(|s| matches!(s, "v2" | "v3" | "v3-protobuf"))
}

/// Everything a database request needs once it is authorized.
struct DbRequest {
    name: String,
    access: auth::Access,
    config: DbConfig,
    cache: std::sync::Arc<engine_core::cache::PageCache>,
    staleness_ms: f64,
    bucket: worker::Bucket,
    /// `TWILL_EMULATE_R2_LATENCY_MS`, for local runs only (see `R2Store::with_emulated_latency`).
    emulated_r2_latency_ms: u64,
}

/// A request's durable reply with its `meta` and `Server-Timing` entry.
struct Performed {
    done: Done,
    meta: Value,
    timing: String,
}

fn isolate_cache(env: &Env) -> std::sync::Arc<engine_core::cache::PageCache> {
    registry::cache(env_number(env, "TWILL_CACHE_BYTES").map_or(DEFAULT_CACHE_BYTES, |v| v as usize))
}

impl DbRequest {
    /// For database `name` (already validated), with the caller's access and, optionally,
    /// its own staleness bound (the header's text).
    fn new(env: &Env, name: &str, access: auth::Access, staleness: Option<&str>) -> Result<Self, ApiError> {
        let config = db_config(env);
        let staleness_ms = match staleness {
            Some(v) => v.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| {
                ApiError::bad_request("INVALID_REQUEST", format!("{STALENESS_HEADER} must be a non-negative number of ms"))
            })?,
            None => config.max_staleness_ms,
        };
        let bucket = env.bucket(BUCKET_BINDING).map_err(|_| ApiError {
            status: 500,
            code: "MISCONFIGURED",
            message: format!("R2 binding {BUCKET_BINDING} is missing"),
        })?;
        let emulated_r2_latency_ms = env_number(env, "TWILL_EMULATE_R2_LATENCY_MS").unwrap_or(0.0).min(10_000.0) as u64;
        Ok(DbRequest { name: name.to_string(), access, config, cache: isolate_cache(env), staleness_ms, bucket, emulated_r2_latency_ms })
    }

    /// Runs `work` (grouped with concurrent requests) and measures it.
    async fn perform(self, work: Work, started: f64) -> Result<Performed, ApiError> {
        let slot = registry::slot(&self.name, self.bucket, self.emulated_r2_latency_ms);
        let cache_before = self.cache.stats();
        let (done, r2) = slot.submit(&self.name, self.config, self.cache.clone(), work, self.staleness_ms).await?;
        let cache_after = self.cache.stats();
        let meta = json!({
            "duration_ms": js_sys::Date::now() - started,
            "rows_read": done.stats.rows_read,
            "rows_written": done.stats.rows_written,
            "log_records_applied": done.stats.records_applied,
            "log_records_committed": done.stats.records_committed,
            "commit_retries": done.stats.retries,
            "r2_reads": r2.reads,
            "r2_writes": r2.writes,
            "r2_bytes_read": r2.bytes_read,
            "r2_bytes_written": r2.bytes_written,
            "cache_hits": cache_after.hits - cache_before.hits,
            "cache_misses": cache_after.misses - cache_before.misses,
        });
        let timing = format!("r2;desc=\"{} reads, {} writes\"", r2.reads, r2.writes);
        Ok(Performed { done, meta, timing })
    }

    /// Runs statements separated by semicolons, each committed as it runs (D1's exec):
    /// `{count, duration, meta}`. Stops at the first failing statement.
    async fn exec(self, sql: String, started: f64) -> Result<Value, ApiError> {
        // Refuse what may not run before anything runs.
        engine_core::guard::script_text_kind(&sql)?;
        let count = engine_core::guard::count_statements(&sql);
        let Performed { done, meta, .. } =
            self.perform(Work::Script(Script::new(vec![Step::always(Action::Sequence(sql))])), started).await?;
        let Reply::Script(outcome) = done.reply else {
            return Err(ApiError { status: 500, code: "INTERNAL_ERROR", message: "script answered as a transaction".into() });
        };
        match &outcome.steps[0] {
            StepOutcome::Failed(e) => Err(e.clone().into()),
            _ => Ok(json!({ "count": count, "duration": meta["duration_ms"], "meta": meta })),
        }
    }
}

async fn route(req: &mut Request, env: &Env, started: f64) -> Result<(Value, Option<String>), ApiError> {
    let url = req.url().map_err(|_| ApiError::bad_request("INVALID_REQUEST", "unparseable URL"))?;
    let segments: Vec<&str> = url.path().trim_matches('/').split('/').collect();
    let rules = auth::parse_rules(
        env.secret("TWILL_TOKENS").ok().map(|v| v.to_string()).or_else(|| env.var("TWILL_TOKENS").ok().map(|v| v.to_string())),
    )?;
    let authorization = req.headers().get("authorization").ok().flatten();
    // With tokens configured, nothing answers without one; scope is checked per database.
    auth::authorize(&rules, authorization.as_deref(), None)?;
    if segments == [""] {
        return match req.method() {
            Method::Get | Method::Head => Ok((service_description(), None)),
            _ => Err(method_not_allowed("GET")),
        };
    }
    let (name, endpoint) = endpoint(&segments, url.path())?;
    let wanted = match endpoint {
        Endpoint::Stats | Endpoint::HranaVersion(_) => Method::Get,
        _ => Method::Post,
    };
    if req.method() != wanted {
        return Err(method_not_allowed(if wanted == Method::Get { "GET" } else { "POST" }));
    }
    validate_db_name(name)?;
    let access = auth::authorize(&rules, authorization.as_deref(), Some(name))?;
    match endpoint {
        Endpoint::Stats => return Ok((stats(name, &isolate_cache(env)).await, None)),
        Endpoint::HranaVersion(v) => return Ok((json!({ "protocol": "hrana", "version": v, "encoding": "json" }), None)),
        _ => {}
    }
    let staleness = req.headers().get(STALENESS_HEADER).ok().flatten();
    let db = DbRequest::new(env, name, access, staleness.as_deref())?;
    let body = read_body(req).await?;
    match endpoint {
        Endpoint::HranaPipeline => {
            let plan = hrana::plan(&body)?;
            if db.access == auth::Access::Read && plan.kind()? != StatementKind::Read {
                return Err(auth::read_only_error());
            }
            let performed = db.perform(Work::Script(plan.script.clone()), started).await?;
            let Reply::Script(outcome) = &performed.done.reply else {
                return Err(ApiError { status: 500, code: "INTERNAL_ERROR", message: "script answered as a transaction".into() });
            };
            let mut body = hrana::respond(&plan, outcome);
            body["meta"] = performed.meta;
            Ok((body, Some(performed.timing)))
        }
        Endpoint::Exec => {
            let sql = wire::parse_exec(&body)?;
            if db.access == auth::Access::Read && engine_core::guard::script_text_kind(&sql)? != StatementKind::Read {
                return Err(auth::read_only_error());
            }
            Ok((db.exec(sql, started).await?, None))
        }
        _ => {
            let statements = match endpoint {
                Endpoint::Query => vec![wire::parse_query(&body)?],
                _ => wire::parse_batch(&body)?,
            };
            if db.access == auth::Access::Read {
                auth::check_read_only(&statements)?;
            }
            let performed = db.perform(Work::Transaction(statements), started).await?;
            let Reply::Transaction(results) = performed.done.reply else {
                return Err(ApiError { status: 500, code: "INTERNAL_ERROR", message: "transaction answered as a script".into() });
            };
            Ok((respond(endpoint, results, performed.meta), Some(performed.timing)))
        }
    }
}

async fn stats(name: &str, cache: &engine_core::cache::PageCache) -> Value {
    let c = cache.stats();
    let cache = json!({
        "bytes": c.bytes, "budget_bytes": c.budget, "entries": c.entries,
        "hits": c.hits, "misses": c.misses, "evictions": c.evictions,
    });
    let Some(slot) = registry::existing_slot(name) else {
        return json!({ "database": name, "open_in_this_isolate": false, "cache": cache });
    };
    let r2 = slot.store.counts();
    let (applied, checkpoint) = slot.positions().unwrap_or((0, 0));
    json!({
        "database": name,
        "open_in_this_isolate": true,
        "applied_seq": applied,
        "checkpoint_seq": checkpoint,
        "r2": { "reads": r2.reads, "writes": r2.writes, "bytes_read": r2.bytes_read, "bytes_written": r2.bytes_written },
        "cache": cache,
    })
}

fn respond(endpoint: Endpoint, results: Vec<engine_core::StatementResult>, meta: Value) -> Value {
    match endpoint {
        Endpoint::Query => {
            let mut body = result_to_json(&results[0]);
            body["meta"] = meta;
            body
        }
        _ => json!({
            "results": results.iter().map(result_to_json).collect::<Vec<_>>(),
            "meta": meta,
        }),
    }
}

fn method_not_allowed(allowed: &str) -> ApiError {
    ApiError { status: 405, code: "METHOD_NOT_ALLOWED", message: format!("this route accepts {allowed} only") }
}

async fn read_body(req: &mut Request) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError {
        status: 413,
        code: "PAYLOAD_TOO_LARGE",
        message: format!("request bodies may be at most {} bytes (BODY_SIZE limit)", LIMITS.max_body_bytes),
    };
    if let Ok(Some(len)) = req.headers().get("content-length") {
        if len.parse::<usize>().map_or(true, |n| n > LIMITS.max_body_bytes) {
            return Err(too_large());
        }
    }
    let body = req.bytes().await.map_err(|e| ApiError::bad_request("INVALID_REQUEST", format!("reading body: {e}")))?;
    if body.len() > LIMITS.max_body_bytes {
        return Err(too_large());
    }
    Ok(body)
}

fn service_description() -> Value {
    json!({
        "service": "TwillDB Edge",
        "routes": {
            "POST /v1/db/{name}/query": {"sql": "...", "params": "[...] or {...}"},
            "POST /v1/db/{name}/batch": {"statements": [{"sql": "...", "params": "..."}]},
            "POST /v1/db/{name}/exec": {"sql": "statements separated by semicolons"},
            "GET /v1/db/{name}/stats": {},
            "libSQL (Hrana over HTTP, JSON)": "client URL http(s)://<host>/v1/db/{name}/ (POST v2/pipeline, v3/pipeline)",
        }
    })
}
