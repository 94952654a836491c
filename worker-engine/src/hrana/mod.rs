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

mod request;
mod response;

use engine_core::guard::{check_script_statement, is_transaction_control, script_text_kind, StatementKind};
use engine_core::script::{Action, Script, ScriptOutcome, Step};
use engine_core::txn::{OpenAtEnd, TxAction};

use crate::baton::{self, BatonKey, Stream, StreamState};
use crate::db_request::Meta;
use crate::wire::{ApiError, LIMITS};
use request::{batch_steps, sql_text, sql_too_long, statement, CursorBody, PipelineBody, StreamRequest};
use response::{respond, respond_cursor, HError, StmtResult, StreamResponse};

/// Steps one pipeline may hold (HRANA_STEPS limit). Pipelines are bounded by their size
/// (BODY_SIZE) and their work (VM_STEPS) first; this only stops absurd ones.
pub const MAX_STEPS: usize = 20_000;
/// SQL texts one stream may keep stored (HRANA_STORED_SQL limit).
pub const MAX_STORED_SQL: usize = 128;

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

#[cfg(test)]
mod tests {
    use engine_core::script::{Cond, StepOutcome};
    use engine_core::{EngineError, Params, SqlValue, StatementResult};

    use super::request::ARGS_INVALID;
    use super::response::HError;
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
