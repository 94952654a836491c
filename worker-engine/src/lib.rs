//! The TwillDB Edge Worker: HTTP routing in front of engine-core, durable in R2.
//!
//! Routes:
//! * `POST /v1/db/{name}/query`: one statement, `{"sql", "params"}`.
//! * `POST /v1/db/{name}/batch`: `{"statements": [...]}`, all in one transaction.
//! * `GET /v1/db/{name}/stats`: replication and cache figures of this isolate.
//! * `GET /`: a short description of the service.
//!
//! Settings (Worker vars, all optional): `TWILL_CACHE_BYTES`, `TWILL_CHECKPOINT_RECORDS`,
//! `TWILL_CHECKPOINT_BYTES`, `TWILL_GC_RETENTION_MS`, `TWILL_MAX_STALENESS_MS`. A request may
//! lower or raise its own staleness bound with the `x-twill-max-staleness-ms` header.

mod auth;
mod registry;
pub mod wire;

use engine_core::cache::DEFAULT_CACHE_BYTES;
use engine_core::{DbConfig, TxResult};
use serde_json::{json, Value};
use wire::{result_to_json, validate_db_name, ApiError, LIMITS};
use worker::{event, Context, Env, Method, Request, Response};

/// The R2 binding holding every database.
const BUCKET_BINDING: &str = "BUCKET";

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let started = js_sys::Date::now();
    let answer = route(&mut req, &env, started).await;
    let (status, body, timing) = match answer {
        Ok((body, timing)) => (200, body, timing),
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
    Stats,
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
    c
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
    let (name, endpoint) = match segments.as_slice() {
        [""] => {
            return match req.method() {
                Method::Get | Method::Head => Ok((service_description(), None)),
                _ => Err(method_not_allowed("GET")),
            }
        }
        ["v1", "db", name, "query"] => (*name, Endpoint::Query),
        ["v1", "db", name, "batch"] => (*name, Endpoint::Batch),
        ["v1", "db", name, "stats"] => (*name, Endpoint::Stats),
        _ => {
            return Err(ApiError { status: 404, code: "NOT_FOUND", message: format!("no route for {}", url.path()) })
        }
    };
    let wanted_method = if matches!(endpoint, Endpoint::Stats) { Method::Get } else { Method::Post };
    if req.method() != wanted_method {
        return Err(method_not_allowed(if matches!(endpoint, Endpoint::Stats) { "GET" } else { "POST" }));
    }
    validate_db_name(name)?;
    let access = auth::authorize(&rules, authorization.as_deref(), Some(name))?;
    let config = db_config(env);
    let cache = registry::cache(env_number(env, "TWILL_CACHE_BYTES").map_or(DEFAULT_CACHE_BYTES, |v| v as usize));
    if matches!(endpoint, Endpoint::Stats) {
        return Ok((stats(name, &cache).await, None));
    }
    let body = read_body(req).await?;
    let statements = match endpoint {
        Endpoint::Query => vec![wire::parse_query(&body)?],
        _ => wire::parse_batch(&body)?,
    };
    if access == auth::Access::Read {
        auth::check_read_only(&statements)?;
    }
    let staleness = match req.headers().get(STALENESS_HEADER).ok().flatten() {
        Some(v) => v.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| {
            ApiError::bad_request("INVALID_REQUEST", format!("{STALENESS_HEADER} must be a non-negative number of ms"))
        })?,
        None => config.max_staleness_ms,
    };
    let bucket = env
        .bucket(BUCKET_BINDING)
        .map_err(|_| ApiError { status: 500, code: "MISCONFIGURED", message: format!("R2 binding {BUCKET_BINDING} is missing") })?;
    let slot = registry::slot(name, bucket);
    let cache_before = cache.stats();
    let (tx, r2) = slot.submit(name, config, cache.clone(), statements, staleness).await?;
    let cache_after = cache.stats();

    let duration_ms = js_sys::Date::now() - started;
    let meta = json!({
        "duration_ms": duration_ms,
        "rows_read": tx.stats.rows_read,
        "rows_written": tx.stats.rows_written,
        "log_records_applied": tx.stats.records_applied,
        "log_records_committed": tx.stats.records_committed,
        "commit_retries": tx.stats.retries,
        "r2_reads": r2.reads,
        "r2_writes": r2.writes,
        "r2_bytes_read": r2.bytes_read,
        "r2_bytes_written": r2.bytes_written,
        "cache_hits": cache_after.hits - cache_before.hits,
        "cache_misses": cache_after.misses - cache_before.misses,
    });
    let timing = Some(format!("r2;desc=\"{} reads, {} writes\"", r2.reads, r2.writes));
    Ok((respond(endpoint, tx, meta), timing))
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

fn respond(endpoint: Endpoint, tx: TxResult, meta: Value) -> Value {
    match endpoint {
        Endpoint::Query | Endpoint::Stats => {
            let mut body = result_to_json(&tx.results[0]);
            body["meta"] = meta;
            body
        }
        Endpoint::Batch => json!({
            "results": tx.results.iter().map(result_to_json).collect::<Vec<_>>(),
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
        }
    })
}
