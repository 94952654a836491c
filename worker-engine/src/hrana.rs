//! libSQL's Hrana protocol over HTTP, JSON encoding (versions 2 and 3): what
//! `@libsql/client` and the libSQL SDKs speak.
//!
//! A pipeline becomes one engine script (see `engine_core::script`): every `execute`,
//! `batch` step, `sequence`, `describe` and `get_autocommit` is a step, run in order on one
//! connection, and everything the pipeline commits is durable before the answer is sent.
//! A batch is all or nothing.
//!
//! Streams live in the baton (see `baton.rs`), because the next request may reach another
//! isolate: the stored SQL texts, and an interactive transaction left open as its
//! replayable log (`engine_core::txn`), sealed under `TWILL_BATON_KEY`. Without the key a
//! transaction cannot span requests: it is rolled back at the end of the pipeline, and the
//! stream refuses every statement until the client ends it, so nothing ever runs outside
//! the transaction the client believes it is in.

use std::collections::BTreeMap;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use engine_core::guard::{check_script_statement, is_transaction_control, script_text_kind, StatementKind};
use engine_core::script::{Action, Cond, Script, ScriptOutcome, Step, StepOutcome};
use engine_core::txn::{OpenAtEnd, TxAction};
use engine_core::{Description, EngineError, Params, SqlValue, Statement, StatementResult};
use serde::{Deserialize, Serialize, Serializer};

use crate::baton::{self, BatonKey, Stream, StreamState};
use crate::db_request::Meta;
use crate::wire::{ApiError, LIMITS};

/// Steps one pipeline may hold (HRANA_STEPS limit). Pipelines are bounded by their size
/// (BODY_SIZE) and their work (VM_STEPS) first; this only stops absurd ones.
pub const MAX_STEPS: usize = 20_000;
/// SQL texts one stream may keep stored (HRANA_STORED_SQL limit).
pub const MAX_STORED_SQL: usize = 128;

/// Hrana's code for arguments that do not fit the statement (sqld's name).
const ARGS_INVALID: &str = "ARGS_INVALID";

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

/// A cursor request (`v3/cursor`): one batch, whose results come back as a sequence of
/// entries, one JSON object per line.
#[derive(Deserialize)]
struct CursorBody {
    #[serde(default)]
    baton: Option<String>,
    batch: HBatch,
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

/// An error in Hrana's shape. SQL errors carry SQLite's result code name in `code`: the
/// extended one where the engine knows it (`SQLITE_CONSTRAINT_UNIQUE`), else the primary
/// one (`SQLITE_ERROR`), as sqld names them; `extended_code` and `raw_code` say the same for
/// clients that keep them (the JSON client keeps only `message` and `code`).
#[derive(Debug, Clone, PartialEq, Serialize)]
struct HError {
    code: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    extended_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_code: Option<i32>,
}

impl HError {
    fn new(code: &str, message: impl Into<String>) -> Self {
        HError { code: code.into(), message: message.into(), extended_code: None, raw_code: None }
    }
}

impl From<&EngineError> for HError {
    fn from(e: &EngineError) -> Self {
        let code = match e {
            EngineError::Sql(f) => f.code.name(),
            EngineError::Params(_) => ARGS_INVALID,
            other => other.code(),
        };
        let sqlite = e.sqlite_code();
        HError {
            code: code.into(),
            message: e.to_string(),
            extended_code: sqlite.map(|c| c.name()),
            raw_code: sqlite.map(|c| c.raw()),
        }
    }
}

/// What each request of the pipeline turned into.
enum Planned {
    /// Answered without running anything: a close, stored SQL, the autocommit state or a
    /// ROLLBACK that ends an abandoned transaction.
    Answered(StreamResponse<'static>),
    Failed(HError),
    Execute { step: usize, want_rows: bool },
    Batch { first: usize, want_rows: Vec<bool> },
    /// A batch refused as a whole: every step fails with this error.
    BatchFailed { error: HError, steps: usize },
    Sequence(usize),
    Describe(usize),
    GetAutocommit(usize),
}

/// Where the stream stands while the pipeline is planned.
enum Mode {
    /// Requests become steps of the script.
    Running,
    /// The client's transaction was abandoned: its statements are refused with this
    /// error until it sends ROLLBACK (or COMMIT, which fails).
    Refusing(HError),
}

/// What a pipeline runs with: its database, the baton key, the time, how long an
/// interactive transaction may stay idle.
pub struct Context<'a> {
    pub db: &'a str,
    pub key: Option<&'a BatonKey>,
    pub now_ms: f64,
    pub tx_idle_ms: f64,
}

/// A pipeline ready to run: the script, how to answer, and the stream's state after it.
pub struct Plan {
    pub script: Script,
    planned: Vec<Planned>,
    state: StreamState,
    refusing_at_end: Option<HError>,
    closed: bool,
}

impl Plan {
    /// The most the pipeline may do, the transaction it continues included: a read-only
    /// token may run it only if this is `Read`.
    pub fn kind(&self) -> Result<StatementKind, ApiError> {
        let mut kind = StatementKind::Read;
        let resumed = self.script.resume.iter().flat_map(|tx| tx.entries.iter()).map(|e| match &e.action {
            TxAction::Execute(s) => check_script_statement(&s.sql),
            TxAction::Sequence(sql) => script_text_kind(sql),
        });
        let steps = self.script.steps.iter().map(|step| match &step.action {
            Action::Execute(s) => check_script_statement(&s.sql),
            Action::Sequence(sql) => script_text_kind(sql),
            Action::Describe(_) | Action::GetAutocommit => Ok(StatementKind::Read),
        });
        for k in resumed.chain(steps) {
            if k? == StatementKind::Write {
                kind = StatementKind::Write;
            }
        }
        Ok(kind)
    }

    /// True if nothing needs the engine (only stored SQL, closes, refused requests).
    pub fn is_empty(&self) -> bool {
        self.script.steps.is_empty() && self.script.resume.is_none()
    }

    /// The log position the pipeline must run at or after (a transaction it continues).
    pub fn min_seq(&self) -> Option<u64> {
        self.script.resume.as_ref().map(|tx| tx.seen_seq)
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("HRANA_PROTO_ERROR", message)
}

fn abandoned_error(code: &str, message: &str) -> HError {
    HError::new(code, message)
}

/// Which Hrana request a body is (the path says), and how it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HranaRequest {
    /// `{baton, requests}`, answered with one JSON object.
    Pipeline,
    /// `{baton, batch}`, answered as JSON lines.
    Cursor,
}

impl HranaRequest {
    /// Parses the body and turns it into a script.
    pub fn plan(self, body: &[u8], ctx: &Context) -> Result<Plan, ApiError> {
        match self {
            HranaRequest::Pipeline => plan(body, ctx),
            HranaRequest::Cursor => plan_cursor(body, ctx),
        }
    }

    /// The answer, given what the script did (an empty outcome and no `meta` if nothing ran).
    pub fn answer(self, plan: Plan, outcome: &ScriptOutcome, meta: Option<&Meta>, ctx: &Context) -> Result<crate::Body, ApiError> {
        Ok(match self {
            HranaRequest::Pipeline => crate::Body::Encoded(respond(plan, outcome, meta, ctx).encode()?),
            HranaRequest::Cursor => crate::Body::Lines(respond_cursor(plan, outcome, meta, ctx)?),
        })
    }
}

/// Parses a pipeline request body and turns it into a script.
fn plan(body: &[u8], ctx: &Context) -> Result<Plan, ApiError> {
    let body: PipelineBody =
        serde_json::from_slice(body).map_err(|e| invalid(format!("pipeline request body: {e}")))?;
    plan_requests(body.baton, body.requests, ctx)
}

/// Parses a cursor request body: its batch is planned as a pipeline of that one batch.
fn plan_cursor(body: &[u8], ctx: &Context) -> Result<Plan, ApiError> {
    let body: CursorBody = serde_json::from_slice(body).map_err(|e| invalid(format!("cursor request body: {e}")))?;
    plan_requests(body.baton, vec![StreamRequest::Batch { batch: body.batch }], ctx)
}

fn plan_requests(baton: Option<String>, requests: Vec<StreamRequest>, ctx: &Context) -> Result<Plan, ApiError> {
    let mut state = match &baton {
        Some(b) => baton::open(b, ctx.key, ctx.db, ctx.now_ms, ctx.tx_idle_ms)?,
        None => StreamState::new(ctx.db, ctx.now_ms),
    };
    let mut script = Script {
        open_at_end: if ctx.key.is_some() { OpenAtEnd::Carry } else { OpenAtEnd::RollBack },
        ..Script::default()
    };
    let mut mode = match std::mem::replace(&mut state.stream, Stream::Idle) {
        Stream::Idle => Mode::Running,
        Stream::InTransaction { tx } => {
            script.resume = Some(tx);
            Mode::Running
        }
        Stream::Abandoned { code, message } => Mode::Refusing(abandoned_error(&code, &message)),
    };
    let stored = &mut state.sql;
    let mut planned_all = Vec::new();
    let mut closed = false;
    for request in requests {
        if closed {
            planned_all.push(Planned::Failed(HError::new("STREAM_CLOSED", "the stream was closed by an earlier request")));
            continue;
        }
        let planned = match (request, &mode) {
            (StreamRequest::Close, _) => {
                closed = true;
                Planned::Answered(StreamResponse::Close)
            }
            (StreamRequest::StoreSql { sql_id, sql }, _) => {
                if sql.len() > LIMITS.max_sql_bytes {
                    Planned::Failed(sql_too_long())
                } else if stored.len() >= MAX_STORED_SQL && !stored.contains_key(&sql_id) {
                    Planned::Failed(HError::new(
                        "LIMIT_EXCEEDED",
                        format!("a stream may store at most {MAX_STORED_SQL} SQL texts (HRANA_STORED_SQL limit)"),
                    ))
                } else {
                    stored.insert(sql_id, sql);
                    Planned::Answered(StreamResponse::StoreSql)
                }
            }
            (StreamRequest::CloseSql { sql_id }, _) => {
                stored.remove(&sql_id);
                Planned::Answered(StreamResponse::CloseSql)
            }
            (StreamRequest::GetAutocommit, Mode::Refusing(_)) => {
                Planned::Answered(StreamResponse::GetAutocommit { is_autocommit: false })
            }
            (StreamRequest::Execute { stmt }, Mode::Refusing(e)) => match sql_text(stored, stmt.sql, stmt.sql_id) {
                Ok(sql) if ends_transaction(&sql) => {
                    // The client ends the transaction it believes open: a ROLLBACK
                    // succeeds (there is nothing left to undo), a COMMIT fails; either
                    // way the stream is usable again.
                    let answer = if is_rollback(&sql) {
                        Planned::Answered(StreamResponse::Execute { result: StmtResult::empty() })
                    } else {
                        Planned::Failed(e.clone())
                    };
                    mode = Mode::Running;
                    answer
                }
                Ok(_) => Planned::Failed(e.clone()),
                Err(e) => Planned::Failed(e),
            },
            (StreamRequest::Batch { batch }, Mode::Refusing(e)) => {
                Planned::BatchFailed { error: e.clone(), steps: batch.steps.len() }
            }
            (StreamRequest::Sequence { .. }, Mode::Refusing(e)) => Planned::Failed(e.clone()),
            (StreamRequest::Describe { sql, sql_id }, _) => {
                match sql_text(stored, sql, sql_id) {
                    Ok(sql) => {
                        script.steps.push(Step::always(Action::Describe(sql)));
                        Planned::Describe(script.steps.len() - 1)
                    }
                    Err(e) => Planned::Failed(e),
                }
            }
            (StreamRequest::GetAutocommit, Mode::Running) => {
                script.steps.push(Step::always(Action::GetAutocommit));
                Planned::GetAutocommit(script.steps.len() - 1)
            }
            (StreamRequest::Sequence { sql, sql_id }, Mode::Running) => match sql_text(stored, sql, sql_id) {
                Ok(sql) => {
                    script.steps.push(Step::always(Action::Sequence(sql)));
                    Planned::Sequence(script.steps.len() - 1)
                }
                Err(e) => Planned::Failed(e),
            },
            (StreamRequest::Execute { stmt }, Mode::Running) => {
                let want_rows = stmt.want_rows.unwrap_or(true);
                match statement(stored, stmt) {
                    Ok(s) => {
                        script.steps.push(Step::always(Action::Execute(s)));
                        Planned::Execute { step: script.steps.len() - 1, want_rows }
                    }
                    Err(e) => Planned::Failed(e),
                }
            }
            (StreamRequest::Batch { batch }, Mode::Running) => match batch_steps(stored, batch, script.steps.len()) {
                Ok((steps, want_rows)) => {
                    let first = script.steps.len();
                    script.steps.extend(steps);
                    // A batch is all or nothing (see `Script::atomic_units`).
                    script.atomic_units.push(first..script.steps.len());
                    Planned::Batch { first, want_rows }
                }
                Err(e) => Planned::Failed(e),
            },
        };
        planned_all.push(planned);
        if script.steps.len() > MAX_STEPS {
            return Err(ApiError::bad_request(
                "LIMIT_EXCEEDED",
                format!("a pipeline may hold at most {MAX_STEPS} statements and steps (HRANA_STEPS limit)"),
            ));
        }
    }
    let refusing_at_end = match mode {
        Mode::Refusing(e) => Some(e),
        Mode::Running => None,
    };
    Ok(Plan { script, planned: planned_all, state, refusing_at_end, closed })
}

fn ends_transaction(sql: &str) -> bool {
    is_transaction_control(sql) && !sql.trim_start().get(..5).is_some_and(|w| w.eq_ignore_ascii_case("begin"))
}

fn is_rollback(sql: &str) -> bool {
    sql.trim_start().get(..8).is_some_and(|w| w.eq_ignore_ascii_case("rollback"))
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
    // sqld's name for arguments that do not fit, whether found here or by the engine.
    let bad_params = |m: String| HError::new(ARGS_INVALID, m);
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

/// A SQL value in Hrana's JSON encoding (`{"type": "integer", "value": "…"}`, …). Only
/// finite reals are representable: [`StmtResult::of`] refuses the others first.
struct HValueOut<'a>(&'a SqlValue);

impl Serialize for HValueOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Tagged<'a> {
            Null,
            Integer { value: String },
            Float { value: f64 },
            Text { value: &'a str },
            Blob { base64: String },
        }
        match self.0 {
            SqlValue::Null => Tagged::Null,
            SqlValue::Integer(i) => Tagged::Integer { value: i.to_string() },
            SqlValue::Real(f) => Tagged::Float { value: *f },
            SqlValue::Text(t) => Tagged::Text { value: t },
            SqlValue::Blob(b) => Tagged::Blob { base64: STANDARD_NO_PAD.encode(b) },
        }
        .serialize(s)
    }
}

#[derive(Clone, Copy)]
struct HRows<'a>(&'a [Vec<SqlValue>]);

impl Serialize for HRows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|row| HRow(row)))
    }
}

struct HRow<'a>(&'a [SqlValue]);

impl Serialize for HRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(HValueOut))
    }
}

#[derive(Serialize, Clone)]
struct HCol<'a> {
    name: &'a str,
    decltype: Option<&'a str>,
}

/// A statement's result as Hrana answers it.
#[derive(Serialize, Clone)]
struct StmtResult<'a> {
    cols: Vec<HCol<'a>>,
    rows: HRows<'a>,
    affected_row_count: u64,
    /// As libSQL reports it: the connection's last rowid after every INSERT.
    last_insert_rowid: Option<String>,
    rows_read: u64,
    rows_written: u64,
}

impl<'a> StmtResult<'a> {
    fn empty() -> StmtResult<'static> {
        StmtResult { cols: Vec::new(), rows: HRows(&[]), affected_row_count: 0, last_insert_rowid: None, rows_read: 0, rows_written: 0 }
    }

    fn of(r: &'a StatementResult, want_rows: bool) -> Result<Self, HError> {
        let rows: &[Vec<SqlValue>] = if want_rows { &r.rows } else { &[] };
        if rows.iter().flatten().any(|v| matches!(v, SqlValue::Real(f) if !f.is_finite())) {
            return Err(HError::new("VALUE_NOT_REPRESENTABLE", "an infinite float cannot be written in Hrana's JSON encoding"));
        }
        Ok(StmtResult {
            cols: r
                .columns
                .iter()
                .zip(r.decltypes.iter().chain(std::iter::repeat(&None)))
                .map(|(name, decltype)| HCol { name, decltype: decltype.as_deref() })
                .collect(),
            rows: HRows(rows),
            affected_row_count: r.rows_affected,
            last_insert_rowid: r.is_insert.then(|| r.connection_last_insert_rowid.to_string()),
            rows_read: r.rows_read,
            rows_written: r.rows_written,
        })
    }
}

#[derive(Serialize, Clone)]
struct HParam<'a> {
    name: Option<&'a str>,
}

#[derive(Serialize, Clone)]
struct DescribeResult<'a> {
    params: Vec<HParam<'a>>,
    cols: Vec<HCol<'a>>,
    is_explain: bool,
    is_readonly: bool,
}

impl<'a> DescribeResult<'a> {
    fn of(d: &'a Description) -> Self {
        DescribeResult {
            params: d.params.iter().map(|name| HParam { name: name.as_deref() }).collect(),
            cols: d.columns.iter().map(|(name, decltype)| HCol { name, decltype: decltype.as_deref() }).collect(),
            is_explain: d.is_explain,
            is_readonly: d.is_readonly,
        }
    }
}

#[derive(Serialize, Clone)]
struct BatchResult<'a> {
    step_results: Vec<Option<StmtResult<'a>>>,
    step_errors: Vec<Option<HError>>,
}

/// The answer to one request of the pipeline.
#[derive(Serialize, Clone)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamResponse<'a> {
    Close,
    StoreSql,
    CloseSql,
    Execute { result: StmtResult<'a> },
    Batch { result: BatchResult<'a> },
    Sequence,
    Describe { result: DescribeResult<'a> },
    GetAutocommit { is_autocommit: bool },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamResult<'a> {
    Ok { response: StreamResponse<'a> },
    Error { error: HError },
}

/// What every Hrana answer starts with: the baton the next request sends, and the
/// request's `meta` once the engine ran it (clients ignore it).
#[derive(Serialize)]
struct StreamHead<'a> {
    baton: Option<String>,
    base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Meta>,
}

/// A pipeline's answer: its head, and the result of each request.
#[derive(Serialize)]
struct PipelineAnswer<'a> {
    #[serde(flatten)]
    head: StreamHead<'a>,
    results: Vec<StreamResult<'a>>,
}

impl PipelineAnswer<'_> {
    /// The answer as JSON text.
    fn encode(&self) -> Result<String, ApiError> {
        serde_json::to_string(self).map_err(|e| crate::internal(&format!("encoding the pipeline's answer: {e}")))
    }
}

fn not_carried() -> HError {
    HError::new(
        "TRANSACTION_NOT_SUPPORTED",
        "this pipeline left a transaction open, so it was rolled back: interactive transactions across requests need \
         the server's TWILL_BATON_KEY; every statement of this stream is refused until the client sends ROLLBACK",
    )
}

/// The step's outcome, unless the transaction it ran in was rolled back at the end, or the
/// transaction it continued could not go on.
fn outcome_of(outcome: &ScriptOutcome, step: usize) -> Result<&StepOutcome, HError> {
    if let Some(e) = &outcome.resume_failed {
        return Err(HError::from(e));
    }
    match outcome.rolled_back_from {
        Some(from) if step >= from => Err(not_carried()),
        _ => outcome.steps.get(step).ok_or_else(|| HError::new("INTERNAL_ERROR", "a step has no outcome")),
    }
}

/// One line of a cursor's answer after the first.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum CursorEntry<'a> {
    StepBegin { step: usize, cols: &'a [HCol<'a>] },
    Row { row: HRow<'a> },
    StepEnd { affected_row_count: u64, last_insert_rowid: Option<&'a str>, rows_read: u64, rows_written: u64 },
    StepError { step: usize, error: &'a HError },
    /// The batch as a whole failed (its steps did not run).
    Error { error: &'a HError },
}

/// A cursor's answer, given what its batch did: newline-terminated JSON lines, the head
/// (baton) first, then for each step that ran `step_begin`, its rows and `step_end`, or
/// `step_error` (steps a condition skipped have no entries).
fn respond_cursor(plan: Plan, outcome: &ScriptOutcome, meta: Option<&Meta>, ctx: &Context) -> Result<String, ApiError> {
    let answer = respond(plan, outcome, meta, ctx);
    let mut out = Vec::new();
    push_line(&mut out, &answer.head)?;
    let mut line = |entry: &CursorEntry| push_line(&mut out, entry);
    match answer.results.into_iter().next() {
        Some(StreamResult::Ok { response: StreamResponse::Batch { result } }) => {
            for (step, (result, error)) in result.step_results.iter().zip(&result.step_errors).enumerate() {
                match (result, error) {
                    (Some(r), _) => {
                        line(&CursorEntry::StepBegin { step, cols: &r.cols })?;
                        for row in r.rows.0 {
                            line(&CursorEntry::Row { row: HRow(row) })?;
                        }
                        line(&CursorEntry::StepEnd {
                            affected_row_count: r.affected_row_count,
                            last_insert_rowid: r.last_insert_rowid.as_deref(),
                            rows_read: r.rows_read,
                            rows_written: r.rows_written,
                        })?;
                    }
                    (None, Some(error)) => line(&CursorEntry::StepError { step, error })?,
                    (None, None) => {}
                }
            }
        }
        Some(StreamResult::Error { error }) => line(&CursorEntry::Error { error: &error })?,
        _ => return Err(crate::internal("a cursor's batch was answered as something else")),
    }
    String::from_utf8(out).map_err(|_| crate::internal("a cursor's answer is not UTF-8"))
}

fn push_line<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), ApiError> {
    serde_json::to_writer(&mut *out, value).map_err(|e| crate::internal(&format!("encoding the cursor's answer: {e}")))?;
    out.push(b'\n');
    Ok(())
}

/// The pipeline's answer, given what the script did (an empty outcome if nothing ran) and
/// the request's `meta` (none if nothing ran).
fn respond<'a>(plan: Plan, outcome: &'a ScriptOutcome, meta: Option<&'a Meta>, ctx: &Context) -> PipelineAnswer<'a> {
    let results = plan
        .planned
        .into_iter()
        .map(|p| match answer(p, outcome) {
            Ok(response) => StreamResult::Ok { response },
            Err(error) => StreamResult::Error { error },
        })
        .collect();
    let baton = (!plan.closed).then(|| {
        let stream = if let Some(e) = plan.refusing_at_end {
            Stream::Abandoned { code: e.code, message: e.message }
        } else if let Some(e) = &outcome.resume_failed {
            let e = HError::from(e);
            Stream::Abandoned { code: e.code, message: e.message }
        } else if let Some(tx) = &outcome.carried {
            Stream::InTransaction { tx: tx.clone() }
        } else if outcome.rolled_back_from.is_some() {
            let e = not_carried();
            Stream::Abandoned { code: e.code, message: e.message }
        } else {
            Stream::Idle
        };
        baton::seal(&StreamState { stream, touched_ms: ctx.now_ms, ..plan.state }, ctx.key)
    });
    PipelineAnswer { head: StreamHead { baton, base_url: None, meta }, results }
}

fn answer(planned: Planned, outcome: &ScriptOutcome) -> Result<StreamResponse<'_>, HError> {
    let failed = |o: &StepOutcome| match o {
        StepOutcome::Failed(e) | StepOutcome::Undone(e) => Err(HError::from(e)),
        _ => Err(HError::new("INTERNAL_ERROR", format!("unexpected step outcome {o:?}"))),
    };
    Ok(match planned {
        Planned::Answered(response) => response,
        Planned::Failed(e) => return Err(e),
        Planned::Execute { step, want_rows } => match outcome_of(outcome, step)? {
            StepOutcome::Executed(r) => StreamResponse::Execute { result: StmtResult::of(r, want_rows)? },
            o => return failed(o),
        },
        Planned::Sequence(step) => match outcome_of(outcome, step)? {
            StepOutcome::Sequenced => StreamResponse::Sequence,
            o => return failed(o),
        },
        Planned::Describe(step) => match outcome_of(outcome, step)? {
            StepOutcome::Described(d) => StreamResponse::Describe { result: DescribeResult::of(d) },
            o => return failed(o),
        },
        Planned::GetAutocommit(step) => match outcome_of(outcome, step)? {
            StepOutcome::Autocommit(a) => StreamResponse::GetAutocommit { is_autocommit: *a },
            o => return failed(o),
        },
        Planned::BatchFailed { error, steps } => StreamResponse::Batch {
            result: BatchResult { step_results: vec![None; steps], step_errors: vec![Some(error); steps] },
        },
        Planned::Batch { first, want_rows } => {
            let mut step_results = Vec::with_capacity(want_rows.len());
            let mut step_errors = Vec::with_capacity(want_rows.len());
            for (i, want) in want_rows.into_iter().enumerate() {
                let (result, err) = match outcome_of(outcome, first + i) {
                    Err(e) => (None, Some(e)),
                    Ok(StepOutcome::Executed(r)) => match StmtResult::of(r, want) {
                        Ok(v) => (Some(v), None),
                        Err(e) => (None, Some(e)),
                    },
                    Ok(StepOutcome::Failed(e) | StepOutcome::Undone(e)) => (None, Some(HError::from(e))),
                    Ok(_) => (None, None),
                };
                step_results.push(result);
                step_errors.push(err);
            }
            StreamResponse::Batch { result: BatchResult { step_results, step_errors } }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(key: Option<&BatonKey>) -> Context<'_> {
        Context { db: "app", key, now_ms: 1_000.0, tx_idle_ms: baton::TX_IDLE_MS }
    }

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
            &ctx(None),
        )
        .unwrap();
        assert_eq!(plan.script.steps.len(), 4);
        assert_eq!(plan.script.steps[2].condition, Some(Cond::Ok(1)), "batch steps are renumbered script-wide");
        assert_eq!(plan.script.atomic_units, vec![1..3], "a batch is one all-or-nothing unit");
        let Action::Execute(s) = &plan.script.steps[0].action else { panic!() };
        assert_eq!(s.params, Params::Positional(vec![SqlValue::Integer(i64::MAX)]));
        assert!(matches!(plan.planned[3], Planned::Failed(_)), "unknown sql_id fails that request only");
        let answer = serde_json::to_value(respond(plan, &ScriptOutcome::default(), None, &ctx(None))).unwrap();
        let baton = answer["baton"].as_str().unwrap();
        let state = baton::open(baton, None, "app", 2_000.0, baton::TX_IDLE_MS).unwrap();
        assert_eq!(state.sql.get(&1).map(String::as_str), Some("SELECT ?"));
        assert!(baton::open("forged", None, "app", 2_000.0, baton::TX_IDLE_MS).is_err());
        // Conditions may only look back.
        let p = super::plan(
            br#"{"requests":[{"type":"batch","batch":{"steps":[
            {"condition":{"type":"ok","step":0},"stmt":{"sql":"SELECT 1"}}]}}]}"#,
            &ctx(None),
        )
        .unwrap();
        assert!(matches!(p.planned[0], Planned::Failed(_)));
        for bad in [&b"{}"[..], b"[]", b"{\"requests\":[{\"type\":\"nope\"}]}", b"\xff"] {
            assert!(super::plan(bad, &ctx(None)).is_err());
        }
    }

    #[test]
    fn an_abandoned_transaction_refuses_everything_until_rollback() {
        // Without a baton key, a transaction left open is rolled back and reported.
        let p = plan(br#"{"requests":[{"type":"execute","stmt":{"sql":"SELECT 1"}},{"type":"execute","stmt":{"sql":"BEGIN"}}]}"#, &ctx(None))
            .unwrap();
        let outcome = ScriptOutcome {
            steps: vec![StepOutcome::Executed(StatementResult::default()), StepOutcome::Executed(StatementResult::default())],
            rolled_back_from: Some(1),
            ..ScriptOutcome::default()
        };
        let answer = serde_json::to_value(respond(p, &outcome, None, &ctx(None))).unwrap();
        assert_eq!(answer["results"][0]["type"], "ok");
        assert_eq!(answer["results"][1]["error"]["code"], "TRANSACTION_NOT_SUPPORTED");
        let baton = answer["baton"].as_str().unwrap().to_string();

        // The next request with that baton: statements are refused, never run in
        // autocommit; ROLLBACK ends it and what follows runs normally.
        let body = format!(
            r#"{{"baton":"{baton}","requests":[
                {{"type":"execute","stmt":{{"sql":"INSERT INTO t VALUES (1)"}}}},
                {{"type":"batch","batch":{{"steps":[{{"stmt":{{"sql":"INSERT INTO t VALUES (2)"}}}}]}}}},
                {{"type":"get_autocommit"}},
                {{"type":"execute","stmt":{{"sql":"ROLLBACK"}}}},
                {{"type":"execute","stmt":{{"sql":"SELECT 2"}}}}]}}"#
        );
        let p = plan(body.as_bytes(), &ctx(None)).unwrap();
        assert_eq!(p.script.steps.len(), 1, "only the statement after ROLLBACK runs");
        let outcome = ScriptOutcome { steps: vec![StepOutcome::Executed(StatementResult::default())], ..ScriptOutcome::default() };
        let answer = serde_json::to_value(respond(p, &outcome, None, &ctx(None))).unwrap();
        assert_eq!(answer["results"][0]["error"]["code"], "TRANSACTION_NOT_SUPPORTED");
        assert_eq!(answer["results"][1]["response"]["result"]["step_errors"][0]["code"], "TRANSACTION_NOT_SUPPORTED");
        assert_eq!(answer["results"][2]["response"]["is_autocommit"], false);
        assert_eq!(answer["results"][3]["type"], "ok");
        assert_eq!(answer["results"][4]["type"], "ok");
        let state = baton::open(answer["baton"].as_str().unwrap(), None, "app", 2_000.0, baton::TX_IDLE_MS).unwrap();
        assert_eq!(state.stream, Stream::Idle);
    }

    #[test]
    fn results_encode_in_hranas_json_shape() {
        let p = plan(
            br#"{"requests":[{"type":"execute","stmt":{"sql":"SELECT 1"}},{"type":"execute","stmt":{"sql":"SELECT 2","want_rows":false}},
                {"type":"batch","batch":{"steps":[{"stmt":{"sql":"SELECT 3"}},{"stmt":{"sql":"SELECT 4"}}]}},
                {"type":"store_sql","sql_id":1,"sql":"SELECT 5"},{"type":"close"}]}"#,
            &ctx(None),
        )
        .unwrap();
        let row = vec![
            SqlValue::Null,
            SqlValue::Integer(i64::MIN),
            SqlValue::Real(0.5),
            SqlValue::Text("é".into()),
            SqlValue::Blob(vec![0, 255]),
        ];
        let result = StatementResult {
            columns: vec!["a".into(), "b".into(), "c".into(), "d".into(), "e".into()],
            decltypes: vec![Some("INT".into())],
            rows: vec![row],
            rows_affected: 2,
            is_insert: true,
            connection_last_insert_rowid: 7,
            rows_read: 3,
            ..StatementResult::default()
        };
        let infinite = StatementResult { rows: vec![vec![SqlValue::Real(f64::INFINITY)]], ..StatementResult::default() };
        let failure = EngineError::Sql(engine_core::error::SqlFailure {
            message: "no such table: t".into(),
            code: engine_core::error::SqliteCode::Error,
        });
        let outcome = ScriptOutcome {
            steps: vec![
                StepOutcome::Executed(result.clone()),
                StepOutcome::Executed(result),
                StepOutcome::Executed(infinite),
                StepOutcome::Failed(failure),
            ],
            ..ScriptOutcome::default()
        };
        let answer = serde_json::to_value(respond(p, &outcome, None, &ctx(None))).unwrap();
        let cols = serde_json::json!([{"name": "a", "decltype": "INT"}, {"name": "b", "decltype": null},
            {"name": "c", "decltype": null}, {"name": "d", "decltype": null}, {"name": "e", "decltype": null}]);
        assert_eq!(
            answer["results"][0],
            serde_json::json!({"type": "ok", "response": {"type": "execute", "result": {
                "cols": cols,
                "rows": [[{"type": "null"}, {"type": "integer", "value": "-9223372036854775808"}, {"type": "float", "value": 0.5},
                          {"type": "text", "value": "é"}, {"type": "blob", "base64": "AP8"}]],
                "affected_row_count": 2, "last_insert_rowid": "7", "rows_read": 3, "rows_written": 0}}})
        );
        assert_eq!(answer["results"][1]["response"]["result"]["rows"], serde_json::json!([]), "want_rows: false");
        let batch = &answer["results"][2]["response"]["result"];
        assert_eq!(batch["step_results"], serde_json::json!([null, null]));
        assert_eq!(batch["step_errors"][0]["code"], "VALUE_NOT_REPRESENTABLE");
        assert_eq!(batch["step_errors"][1], serde_json::json!({"code": "SQLITE_ERROR", "message": "no such table: t",
            "extended_code": "SQLITE_ERROR", "raw_code": 1}));
        assert_eq!(answer["results"][3], serde_json::json!({"type": "ok", "response": {"type": "store_sql"}}));
        assert_eq!(answer["results"][4], serde_json::json!({"type": "ok", "response": {"type": "close"}}));
        assert_eq!(answer["baton"], serde_json::Value::Null, "a closed stream has no baton");
        assert_eq!(answer["base_url"], serde_json::Value::Null);
        assert!(answer.get("meta").is_none(), "no meta when nothing ran");
    }

    #[test]
    fn arguments_that_do_not_fit_are_args_invalid_wherever_found() {
        let p = plan(
            br#"{"requests":[{"type":"execute","stmt":{"sql":"SELECT ?","args":[{"type":"integer","value":"x"}]}},
                {"type":"execute","stmt":{"sql":"SELECT ?","args":[{"type":"null"}],"named_args":[{"name":":a","value":{"type":"null"}}]}},
                {"type":"execute","stmt":{"sql":"SELECT ?"}}]}"#,
            &ctx(None),
        )
        .unwrap();
        let outcome = ScriptOutcome {
            steps: vec![StepOutcome::Failed(EngineError::Params("statement takes 1 parameter, 0 given".into()))],
            ..ScriptOutcome::default()
        };
        let answer = serde_json::to_value(respond(p, &outcome, None, &ctx(None))).unwrap();
        for i in 0..3 {
            assert_eq!(answer["results"][i]["error"]["code"], ARGS_INVALID, "request {i}: {answer}");
        }
    }

    #[test]
    fn a_cursor_answers_its_batch_as_json_lines() {
        let p = plan_cursor(
            br#"{"baton":null,"batch":{"steps":[{"stmt":{"sql":"SELECT 1, 2"}},{"stmt":{"sql":"SELECT nope"}},
                {"condition":{"type":"ok","step":1},"stmt":{"sql":"SELECT 3"}},{"stmt":{"sql":"INSERT INTO t VALUES (1)"}}]}}"#,
            &ctx(None),
        )
        .unwrap();
        assert_eq!(p.script.steps.len(), 4);
        let rows = StatementResult {
            columns: vec!["a".into(), "b".into()],
            rows: vec![vec![SqlValue::Integer(1), SqlValue::Text("x".into())], vec![SqlValue::Null, SqlValue::Real(1.5)]],
            ..StatementResult::default()
        };
        let insert =
            StatementResult { rows_affected: 1, is_insert: true, connection_last_insert_rowid: 9, ..StatementResult::default() };
        let failure = EngineError::Sql(engine_core::error::SqlFailure {
            message: "no such column: nope".into(),
            code: engine_core::error::SqliteCode::Error,
        });
        let outcome = ScriptOutcome {
            steps: vec![
                StepOutcome::Executed(rows),
                StepOutcome::Failed(failure),
                StepOutcome::Skipped,
                StepOutcome::Executed(insert),
            ],
            ..ScriptOutcome::default()
        };
        let text = respond_cursor(p, &outcome, None, &ctx(None)).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines[0]["baton"].is_string(), "the stream stays open: {}", lines[0]);
        assert_eq!(lines[0]["base_url"], serde_json::Value::Null);
        assert_eq!(lines[1], serde_json::json!({"type": "step_begin", "step": 0,
            "cols": [{"name": "a", "decltype": null}, {"name": "b", "decltype": null}]}));
        assert_eq!(lines[2], serde_json::json!({"type": "row", "row": [{"type": "integer", "value": "1"}, {"type": "text", "value": "x"}]}));
        assert_eq!(lines[3], serde_json::json!({"type": "row", "row": [{"type": "null"}, {"type": "float", "value": 1.5}]}));
        assert_eq!(lines[4], serde_json::json!({"type": "step_end", "affected_row_count": 0, "last_insert_rowid": null, "rows_read": 0, "rows_written": 0}));
        assert_eq!(lines[5]["type"], "step_error");
        assert_eq!(lines[5]["step"], 1);
        assert_eq!(lines[5]["error"]["code"], "SQLITE_ERROR");
        // Step 2 was skipped by its condition: no entries.
        assert_eq!(lines[6]["type"], "step_begin");
        assert_eq!(lines[6]["step"], 3);
        assert_eq!(lines[7]["last_insert_rowid"], "9");
        assert_eq!(lines.len(), 8);

        // A batch refused as a whole is one error entry.
        let p = plan_cursor(br#"{"batch":{"steps":[{"condition":{"type":"ok","step":0},"stmt":{"sql":"SELECT 1"}}]}}"#, &ctx(None)).unwrap();
        let text = respond_cursor(p, &ScriptOutcome::default(), None, &ctx(None)).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["type"], "error");
        assert_eq!(lines[1]["error"]["code"], "HRANA_PROTO_ERROR");
        for bad in [&b"{}"[..], b"{\"requests\":[]}", b"{\"batch\":{}}"] {
            assert!(plan_cursor(bad, &ctx(None)).is_err());
        }
    }

    #[test]
    fn sql_errors_carry_sqlite_codes() {
        let e = EngineError::Sql(engine_core::error::SqlFailure {
            message: "UNIQUE constraint failed: t.id".into(),
            code: engine_core::error::SqliteCode::ConstraintPrimaryKey,
        });
        let j = serde_json::to_value(HError::from(&e)).unwrap();
        assert_eq!(j["code"], "SQLITE_CONSTRAINT_PRIMARYKEY");
        assert_eq!(j["extended_code"], "SQLITE_CONSTRAINT_PRIMARYKEY");
        assert_eq!(j["raw_code"], 1555);
        assert_eq!(j["message"], "UNIQUE constraint failed: t.id");
    }
}
