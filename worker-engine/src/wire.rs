//! The HTTP SQL wire format (`/v1/db/{name}/query` and `/batch`), as JSON.
//!
//! Values: JSON `null`, numbers, strings. Integers outside ±(2^53 − 1) (where a JSON number
//! would lose precision in JavaScript) are written `{"int": "<decimal>"}`; blobs
//! `{"base64": "<standard base64>"}`; non-finite reals `{"real": "Infinity" | "-Infinity"}`.
//! Requests accept the same forms, plus booleans (bound as 1 and 0) and plain JSON
//! integers of any size that fits in 64 bits.

use base64::Engine as _;
use engine_core::error::SqliteCode;
use engine_core::{EngineError, Params, SqlValue, Statement, StatementResult};
use std::marker::PhantomData;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::db_request::Meta;
use serde_json::{json, Map, Value};

/// Largest integer a JavaScript number holds exactly.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Named limits of the HTTP surface, each reported with code `LIMIT_EXCEEDED` (or
/// `PAYLOAD_TOO_LARGE` for the body) and the limit's name in the message.
pub struct WireLimits {
    pub max_body_bytes: usize,
    pub max_sql_bytes: usize,
    pub max_statements: usize,
    pub max_params: usize,
}

/// Requests are bounded by their size and their work (VM_STEPS), not by a small count:
/// a batch of thousands of statements is fine.
pub const LIMITS: WireLimits =
    WireLimits { max_body_bytes: 8 << 20, max_sql_bytes: 100_000, max_statements: 10_000, max_params: 1_000 };

/// An error answer: HTTP status, code and message, and SQLite's result code for SQL errors.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub sqlite_code: Option<SqliteCode>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), sqlite_code: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(400, code, message)
    }

    /// `{"error": {"code", "message", "sqlite_code"?}}`
    pub fn body(&self) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(c) = self.sqlite_code {
            error["sqlite_code"] = json!(c.name());
        }
        json!({ "error": error })
    }

    /// The body for Hrana routes: libSQL clients read `message` and `code` at the top.
    pub fn hrana_body(&self) -> Value {
        json!({ "message": self.message, "code": self.code, "error": { "code": self.code, "message": self.message } })
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::Sql(_)
            | EngineError::Params(_)
            | EngineError::NotAllowed(_)
            | EngineError::Limit(_)
            | EngineError::InvalidBookmark(_)
            | EngineError::Interrupted(_) => 400,
            EngineError::OutsideHistory(_) | EngineError::UploadNotFound(_) => 404,
            EngineError::UploadConflict(_) => 409,
            EngineError::UploadExpired(_) => 410,
            EngineError::Exists(_) | EngineError::NotEmpty(_) => 409,
            EngineError::InvalidFile(_) => 400,
            EngineError::Conflict { .. } | EngineError::TxConflict(_) => 409,
            EngineError::CommitUnknown(_) | EngineError::Storage(_) | EngineError::Busy(_) => 503,
            EngineError::Corrupt(_) | EngineError::Internal(_) | EngineError::PagesMissing(_) | EngineError::BaseGone(_) => 500,
        };
        let sqlite_code = match &e {
            EngineError::Sql(f) => Some(f.code),
            _ => None,
        };
        ApiError { status, code: e.code(), message: e.to_string(), sqlite_code }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementJson {
    sql: String,
    #[serde(default)]
    params: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryJson {
    sql: String,
    #[serde(default)]
    params: Option<Value>,
    /// A session's bookmark: answer from a state at or after it.
    #[serde(default)]
    bookmark: Option<String>,
    /// Read the state after a past commit (bookmark or time) instead.
    #[serde(default)]
    as_of: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchJson {
    statements: Vec<StatementJson>,
    #[serde(default)]
    bookmark: Option<String>,
    #[serde(default)]
    as_of: Option<String>,
}

/// The statements of a `/query` or `/batch` request, the bookmark it carried and the past
/// commit it reads (`as_of`), if any.
pub struct Parsed {
    pub statements: Vec<Statement>,
    pub bookmark: Option<String>,
    pub as_of: Option<String>,
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("INVALID_REQUEST", format!("request body: {e}")))
}

pub fn parse_query(body: &[u8]) -> Result<Parsed, ApiError> {
    let q: QueryJson = parse_json(body)?;
    let statement = statement_from(StatementJson { sql: q.sql, params: q.params })?;
    Ok(Parsed { statements: vec![statement], bookmark: q.bookmark, as_of: q.as_of })
}

/// `/exec`: `{"sql": "<statements separated by semicolons>"}`, no parameters.
pub fn parse_exec(body: &[u8]) -> Result<String, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ExecJson {
        sql: String,
    }
    let sql = parse_json::<ExecJson>(body)?.sql;
    check_sql_length(&sql)?;
    Ok(sql)
}

pub fn check_sql_length(sql: &str) -> Result<(), ApiError> {
    if sql.len() > LIMITS.max_sql_bytes {
        return Err(ApiError::bad_request(
            "LIMIT_EXCEEDED",
            format!("SQL text may be at most {} bytes (SQL_LENGTH limit)", LIMITS.max_sql_bytes),
        ));
    }
    Ok(())
}

pub fn parse_batch(body: &[u8]) -> Result<Parsed, ApiError> {
    let batch: BatchJson = parse_json(body)?;
    if batch.statements.is_empty() {
        return Err(ApiError::bad_request("INVALID_REQUEST", "a batch needs at least one statement"));
    }
    if batch.statements.len() > LIMITS.max_statements {
        return Err(ApiError::bad_request(
            "LIMIT_EXCEEDED",
            format!("a batch may hold at most {} statements (BATCH_STATEMENTS limit)", LIMITS.max_statements),
        ));
    }
    let statements = batch.statements.into_iter().map(statement_from).collect::<Result<_, _>>()?;
    Ok(Parsed { statements, bookmark: batch.bookmark, as_of: batch.as_of })
}

fn statement_from(s: StatementJson) -> Result<Statement, ApiError> {
    check_sql_length(&s.sql)?;
    if s.sql.trim().is_empty() {
        return Err(ApiError::bad_request("INVALID_REQUEST", "sql is empty"));
    }
    let params = match s.params {
        None | Some(Value::Null) => Params::None,
        Some(Value::Array(items)) => {
            check_param_count(items.len())?;
            Params::Positional(items.iter().map(value_from_json).collect::<Result<_, _>>()?)
        }
        Some(Value::Object(map)) => {
            check_param_count(map.len())?;
            Params::Named(
                map.iter().map(|(k, v)| Ok((k.clone(), value_from_json(v)?))).collect::<Result<_, ApiError>>()?,
            )
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                "INVALID_REQUEST",
                format!("params must be an array or an object, not {}", json_type(&other)),
            ))
        }
    };
    Ok(Statement { sql: s.sql, params })
}

pub fn check_param_count(n: usize) -> Result<(), ApiError> {
    if n > LIMITS.max_params {
        return Err(ApiError::bad_request(
            "LIMIT_EXCEEDED",
            format!("a statement may bind at most {} parameters (PARAMS limit)", LIMITS.max_params),
        ));
    }
    Ok(())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn value_from_json(v: &Value) -> Result<SqlValue, ApiError> {
    let bad = |m: String| ApiError::bad_request("INVALID_PARAMS", m);
    Ok(match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(*b as i64),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                SqlValue::Integer(i)
            } else if n.is_u64() {
                return Err(bad(format!("integer {n} does not fit in 64 signed bits")));
            } else {
                SqlValue::Real(n.as_f64().ok_or_else(|| bad(format!("number {n} is not representable")))?)
            }
        }
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Object(map) => typed_value(map).map_err(bad)?,
        Value::Array(_) => return Err(bad("a parameter value cannot be an array".into())),
    })
}

fn typed_value(map: &Map<String, Value>) -> Result<SqlValue, String> {
    let mut entries = map.iter();
    let (Some((tag, inner)), None) = (entries.next(), entries.next()) else {
        return Err("a typed value is an object with exactly one of: int, base64, real".into());
    };
    let Value::String(text) = inner else {
        return Err(format!("the value of {tag:?} must be a string"));
    };
    match tag.as_str() {
        "int" => text.parse::<i64>().map(SqlValue::Integer).map_err(|_| format!("{text:?} is not a 64-bit integer")),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(SqlValue::Blob)
            .map_err(|e| format!("invalid base64: {e}")),
        "real" => match text.as_str() {
            "Infinity" | "inf" => Ok(SqlValue::Real(f64::INFINITY)),
            "-Infinity" | "-inf" => Ok(SqlValue::Real(f64::NEG_INFINITY)),
            _ => text.parse::<f64>().map(SqlValue::Real).map_err(|_| format!("{text:?} is not a real number")),
        },
        other => Err(format!("unknown typed value {other:?}; expected int, base64 or real")),
    }
}

/// How an answer encodes SQL values: [`Json`] for HTTP; RPC hands JavaScript its own values.
pub trait ValueEncoding {
    fn serialize_value<S: Serializer>(v: &SqlValue, s: S) -> Result<S::Ok, S::Error>;
}

/// The JSON API's values: integers beyond ±2^53 as `{"int": "…"}`, infinite reals as
/// `{"real": "Infinity"}`, blobs as `{"base64": "…"}`; the rest as JSON itself.
pub struct Json;

impl ValueEncoding for Json {
    fn serialize_value<S: Serializer>(v: &SqlValue, s: S) -> Result<S::Ok, S::Error> {
        let tagged = |s: S, tag: &str, text: &str| {
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry(tag, text)?;
            map.end()
        };
        match v {
            SqlValue::Null => s.serialize_unit(),
            SqlValue::Integer(i) if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(i) => s.serialize_i64(*i),
            SqlValue::Integer(i) => tagged(s, "int", &i.to_string()),
            SqlValue::Real(f) if f.is_finite() => s.serialize_f64(*f),
            SqlValue::Real(f) => tagged(s, "real", if *f > 0.0 { "Infinity" } else { "-Infinity" }),
            SqlValue::Text(t) => s.serialize_str(t),
            SqlValue::Blob(b) => tagged(s, "base64", &base64::engine::general_purpose::STANDARD.encode(b)),
        }
    }
}

/// A SQL value in encoding `E`.
pub struct Encoded<'a, E>(pub &'a SqlValue, pub PhantomData<E>);

impl<E: ValueEncoding> Serialize for Encoded<'_, E> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        E::serialize_value(self.0, s)
    }
}

/// A statement's result as `/query` and RPC's `query` answer it (and each of a batch's
/// results), with the request's `meta` when it stands alone.
pub struct ResultAnswer<'a, E> {
    pub result: &'a StatementResult,
    pub meta: Option<&'a Meta>,
    pub encoding: PhantomData<E>,
}

impl<'a, E> ResultAnswer<'a, E> {
    pub fn new(result: &'a StatementResult, meta: Option<&'a Meta>) -> Self {
        ResultAnswer { result, meta, encoding: PhantomData }
    }
}

impl<E: ValueEncoding> Serialize for ResultAnswer<'_, E> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.result;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("columns", &r.columns)?;
        map.serialize_entry("rows", &Rows::<E>(&r.rows, PhantomData))?;
        map.serialize_entry("rows_affected", &r.rows_affected)?;
        map.serialize_entry("rows_read", &r.rows_read)?;
        map.serialize_entry("rows_written", &r.rows_written)?;
        let last_insert_rowid = r.last_insert_rowid.map(SqlValue::Integer);
        map.serialize_entry("last_insert_rowid", &last_insert_rowid.as_ref().map(|v| Encoded::<E>(v, PhantomData)))?;
        if let Some(meta) = self.meta {
            map.serialize_entry("meta", meta)?;
        }
        map.end()
    }
}

struct Rows<'a, E>(&'a [Vec<SqlValue>], PhantomData<E>);

impl<E: ValueEncoding> Serialize for Rows<'_, E> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|row| Row::<E>(row, PhantomData)))
    }
}

struct Row<'a, E>(&'a [SqlValue], PhantomData<E>);

impl<E: ValueEncoding> Serialize for Row<'_, E> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|v| Encoded::<E>(v, PhantomData)))
    }
}

/// A batch's answer (`/batch`, RPC's `batch`).
#[derive(Serialize)]
#[serde(bound = "E: ValueEncoding")]
pub struct BatchAnswer<'a, E: ValueEncoding> {
    pub results: Vec<ResultAnswer<'a, E>>,
    pub meta: &'a Meta,
}

/// The answer of D1's `exec` (`/exec`, RPC's `exec`): how many statements ran, and for how long.
#[derive(Serialize)]
pub struct ExecAnswer<'a> {
    pub count: usize,
    pub duration: f64,
    pub meta: &'a Meta,
}

/// A query-string flag: absent or `false`, or `true`; anything else is refused by name.
pub fn flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request("INVALID_REQUEST", format!("{name} must be true or false, not {other:?}"))),
    }
}

/// Database names: 1 to 63 characters of `a-z`, `0-9`, `-` and `_`, starting with a letter
/// or digit. They become part of R2 keys, so nothing else is accepted.
pub fn validate_db_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "INVALID_DATABASE_NAME",
            "database names are 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_without_losing_precision() {
        for v in [
            SqlValue::Null,
            SqlValue::Integer(i64::MAX),
            SqlValue::Integer(i64::MIN),
            SqlValue::Integer(MAX_SAFE_INTEGER),
            SqlValue::Integer(-5),
            SqlValue::Real(0.25),
            SqlValue::Real(f64::INFINITY),
            SqlValue::Text("x".into()),
            SqlValue::Blob(vec![0, 1, 255]),
        ] {
            assert_eq!(value_from_json(&serde_json::to_value(Encoded::<Json>(&v, PhantomData)).unwrap()).unwrap(), v);
        }
        assert_eq!(serde_json::to_value(Encoded::<Json>(&SqlValue::Integer(1 << 53), PhantomData)).unwrap(), json!({"int": "9007199254740992"}));
        assert_eq!(serde_json::to_string(&Encoded::<Json>(&SqlValue::Real(f64::NEG_INFINITY), PhantomData)).unwrap(), r#"{"real":"-Infinity"}"#);
        assert!(value_from_json(&json!(18446744073709551615u64)).is_err());
        assert!(value_from_json(&json!({"int": "1", "base64": ""})).is_err());
        assert!(value_from_json(&json!([1])).is_err());
    }

    #[test]
    fn results_encode_as_the_json_api_documents_them() {
        let result = StatementResult {
            columns: vec!["a".into(), "b".into()],
            rows: vec![vec![SqlValue::Integer(1 << 60), SqlValue::Blob(vec![1, 2])], vec![SqlValue::Null, SqlValue::Real(0.5)]],
            rows_affected: 2,
            rows_read: 3,
            rows_written: 4,
            last_insert_rowid: Some(7),
            ..Default::default()
        };
        let meta = Meta {
            duration_ms: 1.5,
            bookmark: engine_core::Bookmark(2),
            rows_read: 3,
            rows_written: 4,
            log_records_applied: 0,
            log_records_committed: 1,
            commit_retries: 0,
            r2_reads: 1,
            r2_writes: 1,
            r2_bytes_read: 10,
            r2_bytes_written: 20,
            cache_hits: 5,
            cache_misses: 6,
        };
        let one = json!({
            "columns": ["a", "b"],
            "rows": [[{"int": "1152921504606846976"}, {"base64": "AQI="}], [null, 0.5]],
            "rows_affected": 2, "rows_read": 3, "rows_written": 4, "last_insert_rowid": 7,
        });
        let mut with_meta = one.clone();
        with_meta["meta"] = json!({
            "duration_ms": 1.5, "bookmark": "tw0000000000000002", "rows_read": 3, "rows_written": 4,
            "log_records_applied": 0, "log_records_committed": 1, "commit_retries": 0, "r2_reads": 1,
            "r2_writes": 1, "r2_bytes_read": 10, "r2_bytes_written": 20, "cache_hits": 5, "cache_misses": 6,
        });
        assert_eq!(serde_json::to_value(ResultAnswer::<Json>::new(&result, Some(&meta))).unwrap(), with_meta);
        let batch = BatchAnswer::<Json> { results: vec![ResultAnswer::new(&result, None)], meta: &meta };
        assert_eq!(serde_json::to_value(batch).unwrap(), json!({ "results": [one], "meta": with_meta["meta"] }));
    }

    #[test]
    fn names_and_requests_are_validated() {
        assert!(validate_db_name("app-1_x").is_ok());
        for bad in ["", "-a", "A", "a/b", "a.b", &"a".repeat(64)] {
            assert!(validate_db_name(bad).is_err(), "{bad}");
        }
        assert!(parse_query(br#"{"sql":"select 1","extra":1}"#).is_err());
        assert!(parse_query(br#"{"sql":"select ?","params":5}"#).is_err());
        assert!(parse_query(b"\xff\xfe").is_err());
        assert!(parse_batch(br#"{"statements":[]}"#).is_err());
        let s = parse_query(br#"{"sql":"select :a","params":{"a":{"int":"9223372036854775807"}}}"#).unwrap();
        assert_eq!(s.statements[0].params, Params::Named(vec![("a".into(), SqlValue::Integer(i64::MAX))]));
        let s = parse_batch(br#"{"statements":[{"sql":"select 1"}],"bookmark":"tw0000000000000001"}"#).unwrap();
        assert_eq!(s.bookmark.as_deref(), Some("tw0000000000000001"));
    }
}
