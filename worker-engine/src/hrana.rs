//! libSQL's Hrana protocol over HTTP, JSON encoding (versions 2 and 3): what
//! `@libsql/client` and the libSQL SDKs speak.
//!
//! A pipeline becomes one engine script (see `engine_core::script`): every `execute`,
//! `batch` step, `sequence`, `describe` and `get_autocommit` is a step, run in order on one
//! connection, and everything the pipeline commits is durable before the answer is sent.
//!
//! Streams are stateless between HTTP requests, because the next request may reach another
//! isolate: the baton carries the stream's stored SQL texts, nothing else. A transaction
//! cannot span requests: if a pipeline leaves one open, the engine rolls it back and every
//! request from the one that began it on is answered with `TRANSACTION_NOT_SUPPORTED`, so
//! a client never believes it is inside a transaction that no longer exists.

use std::collections::BTreeMap;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use engine_core::guard::{check_script_statement, script_text_kind, StatementKind};
use engine_core::script::{Action, Cond, Script, ScriptOutcome, Step, StepOutcome};
use engine_core::{Description, EngineError, Params, SqlValue, Statement, StatementResult};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::wire::{ApiError, LIMITS};

/// Steps one pipeline may hold (HRANA_STEPS limit): a batch of `max_statements`
/// statements plus the BEGIN/COMMIT/ROLLBACK steps clients wrap around it, twice over.
pub const MAX_STEPS: usize = 2 * (LIMITS.max_statements + 3);
/// SQL texts one stream may keep stored (HRANA_STORED_SQL limit).
pub const MAX_STORED_SQL: usize = 128;

const BATON_PREFIX: &str = "twb1.";

/// Accepts base64 with or without padding, as Hrana clients differ.
const BASE64_ANY_PAD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Deserialize)]
struct PipelineBody {
    #[serde(default)]
    baton: Option<String>,
    requests: Vec<StreamRequest>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamRequest {
    Close,
    Execute { stmt: HStmt },
    Batch { batch: HBatch },
    Sequence {
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    Describe {
        #[serde(default)]
        sql: Option<String>,
        #[serde(default)]
        sql_id: Option<i32>,
    },
    StoreSql { sql_id: i32, sql: String },
    CloseSql { sql_id: i32 },
    GetAutocommit,
}

#[derive(Deserialize)]
struct HStmt {
    #[serde(default)]
    sql: Option<String>,
    #[serde(default)]
    sql_id: Option<i32>,
    #[serde(default)]
    args: Vec<HValue>,
    #[serde(default)]
    named_args: Vec<NamedArg>,
    #[serde(default)]
    want_rows: Option<bool>,
}

#[derive(Deserialize)]
struct NamedArg {
    name: String,
    value: HValue,
}

#[derive(Deserialize)]
struct HBatch {
    steps: Vec<HBatchStep>,
}

#[derive(Deserialize)]
struct HBatchStep {
    #[serde(default)]
    condition: Option<HCond>,
    stmt: HStmt,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum HCond {
    Ok { step: usize },
    Error { step: usize },
    Not { cond: Box<HCond> },
    And { conds: Vec<HCond> },
    Or { conds: Vec<HCond> },
    IsAutocommit,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum HValue {
    Null,
    Integer { value: String },
    Float { value: f64 },
    Text { value: String },
    Blob { base64: String },
}

/// A request-level error in Hrana's shape.
#[derive(Debug, Clone, PartialEq)]
struct HError {
    code: String,
    message: String,
}

impl HError {
    fn new(code: &str, message: impl Into<String>) -> Self {
        HError { code: code.into(), message: message.into() }
    }
    fn json(&self) -> Value {
        json!({ "message": self.message, "code": self.code })
    }
}

impl From<&EngineError> for HError {
    fn from(e: &EngineError) -> Self {
        HError::new(e.code(), e.to_string())
    }
}

/// What each request of the pipeline turned into.
enum Planned {
    Close,
    Stored(&'static str),
    Failed(HError),
    Execute { step: usize, want_rows: bool },
    Batch { first: usize, want_rows: Vec<bool> },
    Sequence(usize),
    Describe(usize),
    GetAutocommit(usize),
}

/// A pipeline ready to run: the script, how to answer, and the stream's state after it.
pub struct Plan {
    pub script: Script,
    planned: Vec<Planned>,
    stored: BTreeMap<i32, String>,
    closed: bool,
}

impl Plan {
    /// The most the script may do: a read-only token may run it only if this is `Read`.
    pub fn kind(&self) -> Result<StatementKind, ApiError> {
        let mut kind = StatementKind::Read;
        for step in &self.script.steps {
            let k = match &step.action {
                Action::Execute(s) => check_script_statement(&s.sql)?,
                Action::Sequence(sql) => script_text_kind(sql)?,
                Action::Describe(_) | Action::GetAutocommit => StatementKind::Read,
            };
            if k == StatementKind::Write {
                kind = k;
            }
        }
        Ok(kind)
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("HRANA_PROTO_ERROR", message)
}

/// Parses a pipeline request body and turns it into a script.
pub fn plan(body: &[u8]) -> Result<Plan, ApiError> {
    let body: PipelineBody =
        serde_json::from_slice(body).map_err(|e| invalid(format!("pipeline request body: {e}")))?;
    let mut stored = match &body.baton {
        Some(baton) => decode_baton(baton)?,
        None => BTreeMap::new(),
    };
    let mut plan = Plan { script: Script::default(), planned: Vec::new(), stored: BTreeMap::new(), closed: false };
    for request in body.requests {
        if plan.closed {
            plan.planned.push(Planned::Failed(HError::new("STREAM_CLOSED", "the stream was closed by an earlier request")));
            continue;
        }
        let planned = match request {
            StreamRequest::Close => {
                plan.closed = true;
                Planned::Close
            }
            StreamRequest::StoreSql { sql_id, sql } => {
                if sql.len() > LIMITS.max_sql_bytes {
                    Planned::Failed(sql_too_long())
                } else if stored.len() >= MAX_STORED_SQL && !stored.contains_key(&sql_id) {
                    Planned::Failed(HError::new(
                        "LIMIT_EXCEEDED",
                        format!("a stream may store at most {MAX_STORED_SQL} SQL texts (HRANA_STORED_SQL limit)"),
                    ))
                } else {
                    stored.insert(sql_id, sql);
                    Planned::Stored("store_sql")
                }
            }
            StreamRequest::CloseSql { sql_id } => {
                stored.remove(&sql_id);
                Planned::Stored("close_sql")
            }
            StreamRequest::GetAutocommit => {
                plan.script.steps.push(Step::always(Action::GetAutocommit));
                Planned::GetAutocommit(plan.script.steps.len() - 1)
            }
            StreamRequest::Sequence { sql, sql_id } => match sql_text(&stored, sql, sql_id) {
                Ok(sql) => {
                    plan.script.steps.push(Step::always(Action::Sequence(sql)));
                    Planned::Sequence(plan.script.steps.len() - 1)
                }
                Err(e) => Planned::Failed(e),
            },
            StreamRequest::Describe { sql, sql_id } => match sql_text(&stored, sql, sql_id) {
                Ok(sql) => {
                    plan.script.steps.push(Step::always(Action::Describe(sql)));
                    Planned::Describe(plan.script.steps.len() - 1)
                }
                Err(e) => Planned::Failed(e),
            },
            StreamRequest::Execute { stmt } => {
                let want_rows = stmt.want_rows.unwrap_or(true);
                match statement(&stored, stmt) {
                    Ok(s) => {
                        plan.script.steps.push(Step::always(Action::Execute(s)));
                        Planned::Execute { step: plan.script.steps.len() - 1, want_rows }
                    }
                    Err(e) => Planned::Failed(e),
                }
            }
            StreamRequest::Batch { batch } => match batch_steps(&stored, batch, plan.script.steps.len()) {
                Ok((steps, want_rows)) => {
                    let first = plan.script.steps.len();
                    plan.script.steps.extend(steps);
                    // A batch is all or nothing (see `Script::atomic_units`).
                    plan.script.atomic_units.push(first..plan.script.steps.len());
                    Planned::Batch { first, want_rows }
                }
                Err(e) => Planned::Failed(e),
            },
        };
        plan.planned.push(planned);
        if plan.script.steps.len() > MAX_STEPS {
            return Err(ApiError::bad_request(
                "LIMIT_EXCEEDED",
                format!("a pipeline may hold at most {MAX_STEPS} statements and steps (HRANA_STEPS limit)"),
            ));
        }
    }
    plan.stored = stored;
    Ok(plan)
}

fn sql_too_long() -> HError {
    HError::new("LIMIT_EXCEEDED", format!("SQL text may be at most {} bytes (SQL_LENGTH limit)", LIMITS.max_sql_bytes))
}

fn sql_text(stored: &BTreeMap<i32, String>, sql: Option<String>, sql_id: Option<i32>) -> Result<String, HError> {
    let sql = match (sql, sql_id) {
        (Some(sql), None) => sql,
        (None, Some(id)) => stored
            .get(&id)
            .cloned()
            .ok_or_else(|| HError::new("SQL_NOT_FOUND", format!("no SQL text is stored under sql_id {id}")))?,
        _ => return Err(HError::new("HRANA_PROTO_ERROR", "give exactly one of sql and sql_id")),
    };
    if sql.len() > LIMITS.max_sql_bytes {
        return Err(sql_too_long());
    }
    Ok(sql)
}

fn statement(stored: &BTreeMap<i32, String>, stmt: HStmt) -> Result<Statement, HError> {
    let sql = sql_text(stored, stmt.sql, stmt.sql_id)?;
    if stmt.args.len() + stmt.named_args.len() > LIMITS.max_params {
        return Err(HError::new(
            "LIMIT_EXCEEDED",
            format!("a statement may bind at most {} parameters (PARAMS limit)", LIMITS.max_params),
        ));
    }
    let bad_params = |m: String| HError::new("INVALID_PARAMS", m);
    let params = match (stmt.args.is_empty(), stmt.named_args.is_empty()) {
        (true, true) => Params::None,
        (false, true) => Params::Positional(stmt.args.into_iter().map(value).collect::<Result<_, _>>().map_err(bad_params)?),
        (true, false) => Params::Named(
            stmt.named_args
                .into_iter()
                .map(|a| Ok((a.name, value(a.value)?)))
                .collect::<Result<_, String>>()
                .map_err(bad_params)?,
        ),
        (false, false) => {
            return Err(bad_params("a statement takes either positional args or named_args, not both".into()))
        }
    };
    Ok(Statement { sql, params })
}

fn batch_steps(stored: &BTreeMap<i32, String>, batch: HBatch, offset: usize) -> Result<(Vec<Step>, Vec<bool>), HError> {
    let mut steps = Vec::with_capacity(batch.steps.len());
    let mut want_rows = Vec::with_capacity(batch.steps.len());
    for (i, step) in batch.steps.into_iter().enumerate() {
        let condition = step.condition.map(|c| condition(c, i, offset)).transpose()?;
        want_rows.push(step.stmt.want_rows.unwrap_or(true));
        steps.push(Step { condition, action: Action::Execute(statement(stored, step.stmt)?) });
    }
    Ok((steps, want_rows))
}

/// A batch condition, with step numbers made script-wide. Conditions may only look back.
fn condition(c: HCond, at: usize, offset: usize) -> Result<Cond, HError> {
    let earlier = |step: usize| {
        if step < at {
            Ok(offset + step)
        } else {
            Err(HError::new("HRANA_PROTO_ERROR", format!("batch step {at} has a condition on step {step}, which does not come before it")))
        }
    };
    Ok(match c {
        HCond::Ok { step } => Cond::Ok(earlier(step)?),
        HCond::Error { step } => Cond::Error(earlier(step)?),
        HCond::Not { cond } => Cond::Not(Box::new(condition(*cond, at, offset)?)),
        HCond::And { conds } => Cond::And(conds.into_iter().map(|c| condition(c, at, offset)).collect::<Result<_, _>>()?),
        HCond::Or { conds } => Cond::Or(conds.into_iter().map(|c| condition(c, at, offset)).collect::<Result<_, _>>()?),
        HCond::IsAutocommit => Cond::IsAutocommit,
    })
}

fn value(v: HValue) -> Result<SqlValue, String> {
    Ok(match v {
        HValue::Null => SqlValue::Null,
        HValue::Integer { value } => {
            SqlValue::Integer(value.parse().map_err(|_| format!("{value:?} is not a 64-bit integer"))?)
        }
        HValue::Float { value } => SqlValue::Real(value),
        HValue::Text { value } => SqlValue::Text(value),
        HValue::Blob { base64 } => {
            SqlValue::Blob(BASE64_ANY_PAD.decode(base64).map_err(|e| format!("invalid base64 blob: {e}"))?)
        }
    })
}

fn value_json(v: &SqlValue) -> Result<Value, HError> {
    Ok(match v {
        SqlValue::Null => json!({"type": "null"}),
        SqlValue::Integer(i) => json!({"type": "integer", "value": i.to_string()}),
        SqlValue::Real(f) if f.is_finite() => json!({"type": "float", "value": f}),
        SqlValue::Real(_) => {
            return Err(HError::new("VALUE_NOT_REPRESENTABLE", "an infinite float cannot be written in Hrana's JSON encoding"))
        }
        SqlValue::Text(t) => json!({"type": "text", "value": t}),
        SqlValue::Blob(b) => json!({"type": "blob", "base64": STANDARD_NO_PAD.encode(b)}),
    })
}

fn stmt_result(r: &StatementResult, want_rows: bool) -> Result<Value, HError> {
    let cols: Vec<Value> = r
        .columns
        .iter()
        .zip(r.decltypes.iter().chain(std::iter::repeat(&None)))
        .map(|(name, decltype)| json!({"name": name, "decltype": decltype}))
        .collect();
    let rows = if want_rows {
        r.rows.iter().map(|row| row.iter().map(value_json).collect::<Result<Vec<_>, _>>()).collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    Ok(json!({
        "cols": cols,
        "rows": rows,
        "affected_row_count": r.rows_affected,
        "last_insert_rowid": r.last_insert_rowid.map(|id| id.to_string()),
        "rows_read": r.rows_read,
        "rows_written": r.rows_written,
    }))
}

fn describe_result(d: &Description) -> Value {
    json!({
        "params": d.params.iter().map(|name| json!({"name": name})).collect::<Vec<_>>(),
        "cols": d.columns.iter().map(|(name, decltype)| json!({"name": name, "decltype": decltype})).collect::<Vec<_>>(),
        "is_explain": d.is_explain,
        "is_readonly": d.is_readonly,
    })
}

fn rolled_back() -> HError {
    HError::new(
        "TRANSACTION_NOT_SUPPORTED",
        "interactive transactions across HTTP requests are not supported: this pipeline left a transaction open, so it \
         was rolled back; send BEGIN ... COMMIT within one pipeline (e.g. client.batch())",
    )
}

/// The step's outcome, unless the transaction it ran in was rolled back at the end.
fn outcome_of(outcome: &ScriptOutcome, step: usize) -> Result<&StepOutcome, HError> {
    match outcome.rolled_back_from {
        Some(from) if step >= from => Err(rolled_back()),
        _ => Ok(&outcome.steps[step]),
    }
}

fn ok(response: Value) -> Value {
    json!({"type": "ok", "response": response})
}

fn error(e: &HError) -> Value {
    json!({"type": "error", "error": e.json()})
}

/// The pipeline's answer, given what the script did.
pub fn respond(plan: &Plan, outcome: &ScriptOutcome) -> Value {
    let results: Vec<Value> = plan.planned.iter().map(|p| answer(p, outcome).unwrap_or_else(|e| error(&e))).collect();
    let baton = (!plan.closed).then(|| encode_baton(&plan.stored));
    json!({ "baton": baton, "base_url": null, "results": results })
}

fn answer(planned: &Planned, outcome: &ScriptOutcome) -> Result<Value, HError> {
    let failed = |o: &StepOutcome| match o {
        StepOutcome::Failed(e) | StepOutcome::Undone(e) => Err(HError::from(e)),
        _ => Err(HError::new("INTERNAL_ERROR", format!("unexpected step outcome {o:?}"))),
    };
    Ok(match planned {
        Planned::Close => ok(json!({"type": "close"})),
        Planned::Stored(kind) => ok(json!({"type": kind})),
        Planned::Failed(e) => return Err(e.clone()),
        Planned::Execute { step, want_rows } => match outcome_of(outcome, *step)? {
            StepOutcome::Executed(r) => ok(json!({"type": "execute", "result": stmt_result(r, *want_rows)?})),
            o => return failed(o),
        },
        Planned::Sequence(step) => match outcome_of(outcome, *step)? {
            StepOutcome::Sequenced => ok(json!({"type": "sequence"})),
            o => return failed(o),
        },
        Planned::Describe(step) => match outcome_of(outcome, *step)? {
            StepOutcome::Described(d) => ok(json!({"type": "describe", "result": describe_result(d)})),
            o => return failed(o),
        },
        Planned::GetAutocommit(step) => match outcome_of(outcome, *step)? {
            StepOutcome::Autocommit(a) => ok(json!({"type": "get_autocommit", "is_autocommit": a})),
            o => return failed(o),
        },
        Planned::Batch { first, want_rows } => {
            let mut step_results = Vec::with_capacity(want_rows.len());
            let mut step_errors = Vec::with_capacity(want_rows.len());
            for (i, want) in want_rows.iter().enumerate() {
                let (result, err) = match outcome_of(outcome, first + i) {
                    Err(e) => (Value::Null, e.json()),
                    Ok(StepOutcome::Executed(r)) => match stmt_result(r, *want) {
                        Ok(v) => (v, Value::Null),
                        Err(e) => (Value::Null, e.json()),
                    },
                    Ok(StepOutcome::Failed(e) | StepOutcome::Undone(e)) => (Value::Null, HError::from(e).json()),
                    Ok(_) => (Value::Null, Value::Null),
                };
                step_results.push(result);
                step_errors.push(err);
            }
            ok(json!({"type": "batch", "result": {"step_results": step_results, "step_errors": step_errors}}))
        }
    })
}

fn encode_baton(stored: &BTreeMap<i32, String>) -> String {
    let body = serde_json::to_vec(stored).expect("a map of strings serializes");
    format!("{BATON_PREFIX}{}", URL_SAFE_NO_PAD.encode(body))
}

fn decode_baton(baton: &str) -> Result<BTreeMap<i32, String>, ApiError> {
    let bad = || ApiError::bad_request("HRANA_INVALID_BATON", "the baton was not issued by this server");
    let body = baton.strip_prefix(BATON_PREFIX).ok_or_else(bad)?;
    let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
    let stored: BTreeMap<i32, String> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if stored.len() > MAX_STORED_SQL {
        return Err(bad());
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_become_scripts_and_batons_carry_stored_sql() {
        let plan = plan(
            br#"{"baton":null,"requests":[
                {"type":"store_sql","sql_id":1,"sql":"SELECT ?"},
                {"type":"execute","stmt":{"sql_id":1,"args":[{"type":"integer","value":"9223372036854775807"}]}},
                {"type":"batch","batch":{"steps":[{"stmt":{"sql":"BEGIN"}},
                    {"condition":{"type":"ok","step":0},"stmt":{"sql":"SELECT 1"}}]}},
                {"type":"execute","stmt":{"sql_id":7}},
                {"type":"get_autocommit"}]}"#,
        )
        .unwrap();
        assert_eq!(plan.script.steps.len(), 4);
        assert_eq!(plan.script.steps[2].condition, Some(Cond::Ok(1)), "batch steps are renumbered script-wide");
        assert_eq!(plan.script.atomic_units, vec![1..3], "a batch is one all-or-nothing unit");
        let Action::Execute(s) = &plan.script.steps[0].action else { panic!() };
        assert_eq!(s.params, Params::Positional(vec![SqlValue::Integer(i64::MAX)]));
        assert!(matches!(plan.planned[3], Planned::Failed(_)), "unknown sql_id fails that request only");
        let baton = encode_baton(&plan.stored);
        assert_eq!(decode_baton(&baton).unwrap().get(&1).map(String::as_str), Some("SELECT ?"));
        assert!(decode_baton("forged").is_err());
        // Conditions may only look back.
        let p = super::plan(br#"{"requests":[{"type":"batch","batch":{"steps":[
            {"condition":{"type":"ok","step":0},"stmt":{"sql":"SELECT 1"}}]}}]}"#)
        .unwrap();
        assert!(matches!(p.planned[0], Planned::Failed(_)));
        for bad in [&b"{}"[..], b"[]", b"{\"requests\":[{\"type\":\"nope\"}]}", b"\xff"] {
            assert!(super::plan(bad).is_err());
        }
    }

    #[test]
    fn a_transaction_left_open_is_reported_not_silently_dropped() {
        let plan = plan(br#"{"requests":[{"type":"execute","stmt":{"sql":"SELECT 1"}},{"type":"execute","stmt":{"sql":"BEGIN"}}]}"#)
            .unwrap();
        let outcome = ScriptOutcome {
            steps: vec![
                StepOutcome::Executed(StatementResult::default()),
                StepOutcome::Executed(StatementResult::default()),
            ],
            rolled_back_from: Some(1),
        };
        let answer = respond(&plan, &outcome);
        assert_eq!(answer["results"][0]["type"], "ok");
        assert_eq!(answer["results"][1]["error"]["code"], "TRANSACTION_NOT_SUPPORTED");
        assert!(answer["baton"].is_string());
    }
}
