//! The service-binding RPC entry: another Worker that binds this one calls
//! `query(database, sql, params)`, `batch(database, statements)` and `exec(database, sql)`
//! on the entrypoint (ts/src/worker-entry.ts), which forwards here.
//!
//! Values cross the boundary through serde-wasm-bindgen as JavaScript values: integers as
//! numbers when they fit in 2^53 − 1 and as `BigInt` beyond (parameters accept either),
//! blobs as `Uint8Array` (parameters: `Uint8Array` or `ArrayBuffer`), booleans bind as 1/0.
//! Database errors are returned as `{ error: { code, message } }` rather than thrown, so
//! their codes survive the RPC boundary; the TypeScript client throws them.
//!
//! A service binding is configured by the owner of both Workers, so RPC needs no token.

use engine_core::{Params, Reply, SqlValue, Statement, Work};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::json;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::Env;

use crate::auth::Access;
use crate::history_api::{self, Point};
use crate::wire::{check_param_count, check_sql_length, validate_db_name, ApiError, BatchAnswer, ResultAnswer, ValueEncoding, LIMITS, MAX_SAFE_INTEGER};
use crate::db_request::{self, DbRequest, Performed};

#[derive(Deserialize)]
struct RpcStatement {
    sql: String,
    #[serde(default, with = "serde_wasm_bindgen::preserve")]
    params: JsValue,
}

/// Options every RPC method takes last (all optional).
#[derive(Deserialize, Default)]
struct RpcOptions {
    /// A session's bookmark: answer from a state at or after it.
    #[serde(default)]
    bookmark: Option<String>,
    /// Read the state after a past commit (bookmark or time) instead (`query`, `batch`).
    #[serde(default)]
    as_of: Option<String>,
}

/// Entry point for the entrypoint class's RPC methods. Never throws for bad input.
#[wasm_bindgen]
pub async fn rpc(
    method: String,
    database: JsValue,
    payload: JsValue,
    params: JsValue,
    options: JsValue,
    env: JsValue,
    ctx: JsValue,
) -> JsValue {
    let started = js_sys::Date::now();
    let env: Env = env.unchecked_into();
    let answer = run(&method, database, payload, params, options, &env, started).await;
    crate::registry::schedule_quiet_checkpoints(&worker::Context::new(ctx.unchecked_into()));
    match answer {
        Ok(v) => v,
        Err(e) => {
            let mut error = json!({ "code": e.code, "message": e.message });
            if let Some(c) = e.sqlite_code {
                error["sqlite_code"] = json!(c.name());
            }
            to_js(&json!({ "error": error }))
        }
    }
}

fn to_js<T: Serialize + ?Sized>(v: &T) -> JsValue {
    let serializer = serde_wasm_bindgen::Serializer::new().serialize_maps_as_objects(true).serialize_missing_as_null(true);
    v.serialize(&serializer).unwrap_or_else(|e| JsValue::from_str(&format!("serialization failed: {e}")))
}

/// An HTTP-shaped answer as a JavaScript value: text already encoded is parsed by the
/// runtime's `JSON.parse`, without a `serde_json::Value` in between.
fn answer_js(answer: crate::Answer) -> Result<JsValue, ApiError> {
    match answer.body {
        crate::Body::Value(v) => Ok(to_js(&v)),
        crate::Body::Encoded(text) => js_sys::JSON::parse(&text).map_err(|_| crate::internal("re-reading an answer")),
        crate::Body::Lines(_) => Err(crate::internal("RPC has no answer in JSON lines")),
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("INVALID_REQUEST", message)
}

async fn run(
    method: &str,
    database: JsValue,
    payload: JsValue,
    params: JsValue,
    options: JsValue,
    env: &Env,
    started: f64,
) -> Result<JsValue, ApiError> {
    let name = database.as_string().ok_or_else(|| bad("the database name must be a string"))?;
    validate_db_name(&name)?;
    let options: RpcOptions = if options.is_null() || options.is_undefined() {
        RpcOptions::default()
    } else {
        serde_wasm_bindgen::from_value(options).map_err(|e| bad(format!("options: {e}")))?
    };
    let read_from = db_request::read_from(&crate::settings::get(env).db_config, options.bookmark.as_deref(), None)?;
    let db = DbRequest::new(env, &name, Access::Write, read_from)?;
    let as_of = options.as_of.as_deref().map(Point::parse).transpose()?;
    let perform = |db: DbRequest, statements: Vec<Statement>| async move {
        match as_of {
            Some(point) => history_api::read_as_of(db, point, Work::Transaction(statements), started).await,
            None => db.perform(Work::Transaction(statements), started).await,
        }
    };
    match method {
        "query" => {
            let sql = payload.as_string().ok_or_else(|| bad("sql must be a string"))?;
            let statement = statement(sql, &params)?;
            let Performed { done, meta, .. } = perform(db, vec![statement]).await?;
            let Reply::Transaction(results) = done.reply else { return Err(internal()) };
            Ok(to_js(&ResultAnswer::<Js>::new(&results[0], Some(&meta))))
        }
        "batch" => {
            let list: Vec<RpcStatement> =
                serde_wasm_bindgen::from_value(payload).map_err(|e| bad(format!("statements: {e}")))?;
            if list.is_empty() {
                return Err(bad("a batch needs at least one statement"));
            }
            if list.len() > LIMITS.max_statements {
                return Err(ApiError::bad_request(
                    "LIMIT_EXCEEDED",
                    format!("a batch may hold at most {} statements (BATCH_STATEMENTS limit)", LIMITS.max_statements),
                ));
            }
            let statements = list.into_iter().map(|s| statement(s.sql, &s.params)).collect::<Result<Vec<_>, _>>()?;
            let Performed { done, meta, .. } = perform(db, statements).await?;
            let Reply::Transaction(results) = done.reply else { return Err(internal()) };
            let results = results.iter().map(|result| ResultAnswer::new(result, None)).collect();
            Ok(to_js(&BatchAnswer::<Js> { results, meta: &meta }))
        }
        "exec" => {
            let sql = payload.as_string().ok_or_else(|| bad("sql must be a string"))?;
            check_sql_length(&sql)?;
            answer_js(crate::sql_api::exec(db, sql, started).await?)
        }
        // History: the payload is the JSON body the HTTP route takes (`history`: the time).
        "history" => {
            let at = if payload.is_null() || payload.is_undefined() { None } else { Some(js_text(&payload)?) };
            answer_js(history_api::history(db, at.as_deref()).await?)
        }
        "restore" => answer_js(history_api::restore(db, &js_json(payload)?).await?),
        // `delete`: the payload may be `{purge: true}`.
        "delete" => {
            let purge = if payload.is_null() || payload.is_undefined() {
                None
            } else {
                let options: DeleteOptions = serde_wasm_bindgen::from_value(payload).map_err(|e| bad(format!("delete options: {e}")))?;
                options.purge.then_some("true")
            };
            answer_js(crate::admin_api::delete(db, purge).await?)
        }
        "info" => answer_js(crate::admin_api::info(db, env).await?),
        "fork" => {
            let request = history_api::parse_fork(&js_json(payload)?)?;
            validate_db_name(&request.to)?;
            answer_js(history_api::fork(db, request).await?)
        }
        other => Err(ApiError::new(404, "NOT_FOUND", format!("no RPC method {other:?}"))),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteOptions {
    #[serde(default)]
    purge: bool,
}

/// A string, or a number written as one (times in ms).
fn js_text(v: &JsValue) -> Result<String, ApiError> {
    v.as_string().or_else(|| v.as_f64().map(|n| format!("{n}"))).ok_or_else(|| bad("expected a string or a number"))
}

/// A JavaScript object as the JSON bytes an HTTP body would hold.
fn js_json(v: JsValue) -> Result<Vec<u8>, ApiError> {
    let value: serde_json::Value = serde_wasm_bindgen::from_value(v).map_err(|e| bad(format!("request: {e}")))?;
    Ok(serde_json::to_vec(&value).expect("JSON serializes"))
}

fn internal() -> ApiError {
    ApiError::new(500, "INTERNAL_ERROR", "unexpected reply kind")
}

/// RPC's values: JavaScript's own (a BigInt beyond ±(2^53 − 1), a Uint8Array for a blob),
/// through serde-wasm-bindgen.
struct Js;

impl ValueEncoding for Js {
    fn serialize_value<S: Serializer>(v: &SqlValue, s: S) -> Result<S::Ok, S::Error> {
        match v {
            SqlValue::Null => s.serialize_none(),
            SqlValue::Integer(i) if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(i) => s.serialize_i64(*i),
            // Beyond ±(2^53 − 1) a number would round: hand JavaScript a BigInt.
            SqlValue::Integer(i) => serde_wasm_bindgen::preserve::serialize(&JsValue::from(js_sys::BigInt::from(*i)), s),
            SqlValue::Real(f) => s.serialize_f64(*f),
            SqlValue::Text(t) => s.serialize_str(t),
            SqlValue::Blob(b) => s.serialize_bytes(b),
        }
    }
}

fn statement(sql: String, params: &JsValue) -> Result<Statement, ApiError> {
    check_sql_length(&sql)?;
    let params = if params.is_null() || params.is_undefined() {
        Params::None
    } else if let Some(list) = params.dyn_ref::<js_sys::Array>() {
        check_param_count(list.length() as usize)?;
        Params::Positional(list.iter().map(|v| value(&v)).collect::<Result<_, _>>()?)
    } else if params.is_object() && !params.is_function() {
        let entries = js_sys::Object::entries(params.unchecked_ref());
        check_param_count(entries.length() as usize)?;
        Params::Named(
            entries
                .iter()
                .map(|pair| {
                    let pair: js_sys::Array = pair.unchecked_into();
                    let name = pair.get(0).as_string().unwrap_or_default();
                    Ok((name, value(&pair.get(1))?))
                })
                .collect::<Result<_, ApiError>>()?,
        )
    } else {
        return Err(ApiError::bad_request("INVALID_PARAMS", "params must be an array or an object"));
    };
    Ok(Statement { sql, params })
}

/// One JavaScript value as a SQL value, exactly (never through a lossy conversion).
fn value(v: &JsValue) -> Result<SqlValue, ApiError> {
    let bad = |m: String| ApiError::bad_request("INVALID_PARAMS", m);
    if v.is_null() || v.is_undefined() {
        return Ok(SqlValue::Null);
    }
    if let Some(b) = v.as_bool() {
        return Ok(SqlValue::Integer(b as i64));
    }
    if let Some(f) = v.as_f64() {
        let exact_int = f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64;
        return Ok(if exact_int { SqlValue::Integer(f as i64) } else { SqlValue::Real(f) });
    }
    if v.is_bigint() {
        let text = js_sys::BigInt::from(v.clone()).to_string(10).map(String::from).unwrap_or_default();
        return text.parse::<i64>().map(SqlValue::Integer).map_err(|_| bad(format!("BigInt {text} does not fit in 64 signed bits")));
    }
    if let Some(s) = v.as_string() {
        return Ok(SqlValue::Text(s));
    }
    if let Some(bytes) = v.dyn_ref::<js_sys::Uint8Array>() {
        return Ok(SqlValue::Blob(bytes.to_vec()));
    }
    if let Some(buffer) = v.dyn_ref::<js_sys::ArrayBuffer>() {
        return Ok(SqlValue::Blob(js_sys::Uint8Array::new(buffer).to_vec()));
    }
    Err(bad("parameter values are null, booleans, numbers, BigInts, strings, Uint8Arrays or ArrayBuffers".into()))
}
