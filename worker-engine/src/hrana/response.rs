//! Hrana's answers: each request's result or error in Hrana's JSON shapes, the baton that
//! carries the stream on, and a cursor's JSON lines.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use engine_core::script::{ScriptOutcome, StepOutcome};
use engine_core::{Description, EngineError, SqlValue, StatementResult};
use serde::{Serialize, Serializer};

use super::request::ARGS_INVALID;
use super::{Context, Plan, Planned};
use crate::baton::{self, Stream, StreamState};
use crate::db_request::Meta;
use crate::wire::ApiError;

/// An error in Hrana's shape. SQL errors carry SQLite's result code name in `code`: the
/// extended one where the engine knows it (`SQLITE_CONSTRAINT_UNIQUE`), else the primary
/// one (`SQLITE_ERROR`), as sqld names them; `extended_code` and `raw_code` say the same for
/// clients that keep them (the JSON client keeps only `message` and `code`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct HError {
    pub(super) code: String,
    pub(super) message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    extended_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_code: Option<i32>,
}

impl HError {
    pub(super) fn new(code: &str, message: impl Into<String>) -> Self {
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
pub(super) struct StmtResult<'a> {
    cols: Vec<HCol<'a>>,
    rows: HRows<'a>,
    affected_row_count: u64,
    /// As libSQL reports it: the connection's last rowid after every INSERT.
    last_insert_rowid: Option<String>,
    rows_read: u64,
    rows_written: u64,
}

impl<'a> StmtResult<'a> {
    pub(super) fn empty() -> StmtResult<'static> {
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
pub(super) struct DescribeResult<'a> {
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
pub(super) struct BatchResult<'a> {
    step_results: Vec<Option<StmtResult<'a>>>,
    step_errors: Vec<Option<HError>>,
}

/// The answer to one request of the pipeline.
#[derive(Serialize, Clone)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum StreamResponse<'a> {
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
pub(super) struct PipelineAnswer<'a> {
    #[serde(flatten)]
    head: StreamHead<'a>,
    results: Vec<StreamResult<'a>>,
}

impl PipelineAnswer<'_> {
    /// The answer as JSON text.
    pub(super) fn encode(&self) -> Result<String, ApiError> {
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
pub(super) fn respond_cursor(plan: Plan, outcome: &ScriptOutcome, meta: Option<&Meta>, ctx: &Context) -> Result<String, ApiError> {
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
pub(super) fn respond<'a>(plan: Plan, outcome: &'a ScriptOutcome, meta: Option<&'a Meta>, ctx: &Context) -> PipelineAnswer<'a> {
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
