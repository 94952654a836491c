//! What a Hrana request body says, and how its statements, batches and values become the
//! engine's.

use std::collections::BTreeMap;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use engine_core::script::{Action, Cond, Step};
use engine_core::{Params, SqlValue, Statement};
use serde::Deserialize;

use super::response::HError;
use crate::wire::LIMITS;

/// Hrana's code for arguments that do not fit the statement (sqld's name).
pub(super) const ARGS_INVALID: &str = "ARGS_INVALID";

/// Accepts base64 with or without padding, as Hrana clients differ.
const BASE64_ANY_PAD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Deserialize)]
pub(super) struct PipelineBody {
    #[serde(default)]
    pub(super) baton: Option<String>,
    pub(super) requests: Vec<StreamRequest>,
}

/// A cursor request (`v3/cursor`): one batch, whose results come back as a sequence of
/// entries, one JSON object per line.
#[derive(Deserialize)]
pub(super) struct CursorBody {
    #[serde(default)]
    pub(super) baton: Option<String>,
    pub(super) batch: HBatch,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum StreamRequest {
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
pub(super) struct HStmt {
    #[serde(default)]
    pub(super) sql: Option<String>,
    #[serde(default)]
    pub(super) sql_id: Option<i32>,
    #[serde(default)]
    args: Vec<HValue>,
    #[serde(default)]
    named_args: Vec<NamedArg>,
    #[serde(default)]
    pub(super) want_rows: Option<bool>,
}

#[derive(Deserialize)]
struct NamedArg {
    name: String,
    value: HValue,
}

#[derive(Deserialize)]
pub(super) struct HBatch {
    pub(super) steps: Vec<HBatchStep>,
}

#[derive(Deserialize)]
pub(super) struct HBatchStep {
    #[serde(default)]
    condition: Option<HCond>,
    stmt: HStmt,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum HCond {
    Ok { step: usize },
    Error { step: usize },
    Not { cond: Box<HCond> },
    And { conds: Vec<HCond> },
    Or { conds: Vec<HCond> },
    IsAutocommit,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum HValue {
    Null,
    Integer { value: String },
    Float { value: f64 },
    Text { value: String },
    Blob { base64: String },
}

pub(super) fn sql_too_long() -> HError {
    HError::new("LIMIT_EXCEEDED", format!("SQL text may be at most {} bytes (SQL_LENGTH limit)", LIMITS.max_sql_bytes))
}

pub(super) fn sql_text(stored: &BTreeMap<i32, String>, sql: Option<String>, sql_id: Option<i32>) -> Result<String, HError> {
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

pub(super) fn statement(stored: &BTreeMap<i32, String>, stmt: HStmt) -> Result<Statement, HError> {
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

pub(super) fn batch_steps(stored: &BTreeMap<i32, String>, batch: HBatch, offset: usize) -> Result<(Vec<Step>, Vec<bool>), HError> {
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
