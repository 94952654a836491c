//! Running one request on the local database: a transaction the engine begins and commits,
//! or a script that controls transactions itself. Nothing here touches the store; what a
//! request committed locally is shipped by the caller.

use crate::error::EngineError;
use crate::guard::{begins_read_only, check_script_statement, StatementKind};
use crate::local::LocalDb;
use crate::script::{Action, Script, ScriptOutcome, StepOutcome};
use crate::value::{Statement, StatementResult};

use super::{Database, Shape};

/// Where an all-or-nothing unit of a script stands while its steps run.
#[derive(Debug, Clone, Copy)]
struct UnitState {
    /// WAL frames when the unit began: undoing the unit rewinds to here.
    start_frames: u64,
    /// A step of the unit committed something (the WAL grew with no transaction open).
    committed: Option<usize>,
    /// A step failed after the unit had committed something.
    failed_after_commit: Option<usize>,
}

impl Database {
    /// BEGIN, the statements, COMMIT, all locally (a single read runs on its own). Leaves
    /// no transaction open; a failure rolls back this request only.
    pub(super) fn run_local(&mut self, statements: &[Statement], shape: Shape) -> Result<Vec<StatementResult>, EngineError> {
        let limits = self.config.limits;
        let local = self.local()?;
        local.start_request(&limits);
        // One read needs no explicit transaction (it is its own), and BEGIN and COMMIT
        // would cost two more statements to prepare on the hottest path.
        let explicit = shape != Shape::SingleRead;
        if explicit {
            local.exec_control("BEGIN").map_err(|e| local.missing_or(e))?;
        }
        let mut results = Vec::with_capacity(statements.len());
        let rollback = |local: &LocalDb, e: EngineError| {
            let e = local.missing_or(e);
            if local.in_transaction() {
                local.exec_control("ROLLBACK")?;
            }
            Err(e)
        };
        for s in statements {
            match local.execute(s, &limits) {
                Ok(r) => results.push(r),
                Err(e) => return rollback(local, e),
            }
            if local.in_transaction() != explicit {
                // A statement ended the transaction itself, or left one open (the guard
                // should have refused it). Its effects must never ship, and neither may
                // anything else of this group: failing the group discards all of it.
                return Err(EngineError::Internal("a statement changed the request's transaction".into()));
            }
        }
        if explicit {
            if let Err(e) = local.exec_control("COMMIT") {
                return rollback(local, e);
            }
        }
        let missed = local.take_wanted();
        if !missed.is_empty() {
            // turso read around a miss without failing: never trust such a result.
            return Err(EngineError::PagesMissing(missed));
        }
        Ok(results)
    }

    /// Runs a script's steps locally. Step failures are part of its outcome; an error that
    /// is not the client's (or pages to fetch) fails the whole script, and the caller
    /// discards its local effects. Leaves no transaction open.
    pub(super) fn run_script_local(&mut self, script: &Script) -> Result<ScriptOutcome, EngineError> {
        let limits = self.config.limits;
        self.local()?.start_request(&limits);
        let mut outcomes: Vec<StepOutcome> = Vec::with_capacity(script.steps.len());
        let mut opened_at = None;
        let mut read_only_tx = false;
        let mut units = script.atomic_units.iter().peekable();
        let mut unit: Option<(std::ops::Range<usize>, UnitState)> = None;
        let writes_refused = || {
            EngineError::NotAllowed("this is a read-only transaction (BEGIN READONLY); the statement may write".into())
        };
        for (i, step) in script.steps.iter().enumerate() {
            if unit.is_none() && units.peek().is_some_and(|u| u.start == i) {
                let range = units.next().cloned().unwrap_or(i..i);
                unit = Some((range, UnitState { start_frames: self.local()?.wal_frames()?, committed: None, failed_after_commit: None }));
            }
            let local = self.local()?;
            let autocommit = !local.in_transaction();
            if autocommit {
                read_only_tx = false;
            }
            let frames_before = local.wal_frames()?;
            let outcome = if !step.condition.as_ref().is_none_or(|c| c.holds(&outcomes, autocommit)) {
                StepOutcome::Skipped
            } else {
                let result = match &step.action {
                    Action::Execute(statement) => check_script_statement(&statement.sql)
                        .and_then(|kind| if read_only_tx && kind == StatementKind::Write { Err(writes_refused()) } else { Ok(()) })
                        .and_then(|_| local.execute(statement, &limits))
                        .map(StepOutcome::Executed),
                    Action::Sequence(sql) => local
                        .execute_sequence(sql, &limits, |text| match check_script_statement(text)? {
                            StatementKind::Write if read_only_tx => Err(writes_refused()),
                            _ => Ok(()),
                        })
                        .map(|()| StepOutcome::Sequenced),
                    Action::Describe(sql) => local.describe(sql).map(StepOutcome::Described),
                    Action::GetAutocommit => Ok(StepOutcome::Autocommit(autocommit)),
                };
                match result {
                    Ok(outcome) => outcome,
                    Err(e) => match local.missing_or(e) {
                        e if e.is_client_error() => StepOutcome::Failed(e),
                        e => {
                            if local.in_transaction() {
                                let _ = local.exec_control("ROLLBACK");
                            }
                            return Err(e);
                        }
                    },
                }
            };
            match (autocommit, local.in_transaction()) {
                (true, true) => {
                    opened_at = Some(i);
                    read_only_tx = matches!(&step.action, Action::Execute(s) if begins_read_only(&s.sql));
                }
                (_, false) => opened_at = None,
                (false, true) => {}
            }
            if let Some((_, state)) = &mut unit {
                if !local.in_transaction() && local.wal_frames()? > frames_before {
                    state.committed.get_or_insert(i);
                }
                if matches!(outcome, StepOutcome::Failed(_)) && state.committed.is_some() {
                    state.failed_after_commit.get_or_insert(i);
                }
            }
            outcomes.push(outcome);
            if let Some((range, state)) = unit.take_if(|(range, _)| range.end == i + 1) {
                if let (Some(committed), Some(failed)) = (state.committed, state.failed_after_commit) {
                    self.undo_unit(range, state.start_frames, committed, failed, &mut outcomes)?;
                    opened_at = None;
                }
            }
        }
        let local = self.local()?;
        if local.in_transaction() {
            local.exec_control("ROLLBACK").map_err(|e| local.missing_or(e))?;
        }
        let missed = local.take_wanted();
        if !missed.is_empty() {
            return Err(EngineError::PagesMissing(missed));
        }
        Ok(ScriptOutcome { steps: outcomes, rolled_back_from: opened_at })
    }

    /// Undoes everything an all-or-nothing unit committed: the WAL goes back to where it
    /// was when the unit began, and every step of the unit that ran is reported undone.
    fn undo_unit(
        &mut self,
        range: std::ops::Range<usize>,
        start_frames: u64,
        committed: usize,
        failed: usize,
        outcomes: &mut [StepOutcome],
    ) -> Result<(), EngineError> {
        let local = self.local.take().ok_or_else(super::lost_local)?;
        if local.in_transaction() {
            let _ = local.exec_control("ROLLBACK");
        }
        match local.rewind(start_frames) {
            Ok(local) => self.local = Some(local),
            // Reopening needs pages that are not cached (or failed): the caller discards
            // everything unshipped and runs the request again once they are fetched.
            Err((e, reopen)) => {
                let wanted = reopen.take_wanted();
                return Err(if wanted.is_empty() { e } else { EngineError::PagesMissing(wanted) });
            }
        }
        let why = format!(
            "step {} of this batch failed after step {} had committed; everything the batch did was undone (a batch is all or nothing)",
            failed - range.start,
            committed - range.start
        );
        for outcome in &mut outcomes[range] {
            if matches!(outcome, StepOutcome::Executed(_) | StepOutcome::Sequenced) {
                *outcome = StepOutcome::Undone(EngineError::Sql(why.clone()));
            }
        }
        Ok(())
    }
}
