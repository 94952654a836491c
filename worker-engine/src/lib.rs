//! The TwillDB Edge Worker: HTTP routing in front of engine-core, durable in R2.
//!
//! Routes:
//! * `POST /v1/db/{name}/query`: one statement, `{"sql", "params"}`.
//! * `POST /v1/db/{name}/batch`: `{"statements": [...]}`, all in one transaction.
//! * `GET /`: a short description of the service.

mod registry;
pub mod wire;

use engine_core::{EngineError, Statement, TxResult};
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
}

async fn route(req: &mut Request, env: &Env, started: f64) -> Result<(Value, Option<String>), ApiError> {
    let url = req.url().map_err(|_| ApiError::bad_request("INVALID_REQUEST", "unparseable URL"))?;
    let segments: Vec<&str> = url.path().trim_matches('/').split('/').collect();
    let (name, endpoint) = match segments.as_slice() {
        [""] => {
            return match req.method() {
                Method::Get | Method::Head => Ok((service_description(), None)),
                _ => Err(method_not_allowed("GET")),
            }
        }
        ["v1", "db", name, "query"] => (*name, Endpoint::Query),
        ["v1", "db", name, "batch"] => (*name, Endpoint::Batch),
        _ => {
            return Err(ApiError { status: 404, code: "NOT_FOUND", message: format!("no route for {}", url.path()) })
        }
    };
    if req.method() != Method::Post {
        return Err(method_not_allowed("POST"));
    }
    validate_db_name(name)?;
    let body = read_body(req).await?;
    let statements = match endpoint {
        Endpoint::Query => vec![wire::parse_query(&body)?],
        Endpoint::Batch => wire::parse_batch(&body)?,
    };
    let bucket = env
        .bucket(BUCKET_BINDING)
        .map_err(|_| ApiError { status: 500, code: "MISCONFIGURED", message: format!("R2 binding {BUCKET_BINDING} is missing") })?;
    let slot = registry::slot(name, bucket);
    let before = slot.store.counts();
    let mut held = slot.hold(name).await.map_err(|e| fault(e, None))?;
    let outcome = held.db().transact(&statements).await;
    let r2 = held.counts().since(&before);
    let tx = outcome.map_err(|e| fault(e, Some(&mut held)))?;
    drop(held);

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
    });
    let timing = Some(format!("r2;desc=\"{} reads, {} writes\"", r2.reads, r2.writes));
    Ok((respond(endpoint, &statements, tx, meta), timing))
}

fn respond(endpoint: Endpoint, _statements: &[Statement], tx: TxResult, meta: Value) -> Value {
    match endpoint {
        Endpoint::Query => {
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

/// Maps an engine error to an answer; internal faults also drop the isolate's copy.
fn fault(e: EngineError, held: Option<&mut registry::HeldDb<'_>>) -> ApiError {
    if matches!(e, EngineError::Internal(_) | EngineError::Corrupt(_) | EngineError::PagesMissing(_) | EngineError::BaseGone(_)) {
        if let Some(h) = held {
            h.drop_state();
        }
    }
    e.into()
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
