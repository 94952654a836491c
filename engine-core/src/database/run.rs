//! Running one request on the local database: a transaction the engine begins and commits,
//! or a script that controls transactions itself. Nothing here touches the store; what a
//! request committed locally is shipped by the caller.

use crate::chunk_file::PageSource;
use crate::error::{EngineError, SqlFailure, SqliteCode};
use crate::guard::{begins_read_only, check_script_statement, is_transaction_control, StatementKind};
use crate::local::LocalDb;
use crate::script::{Action, Script, ScriptOutcome, StepOutcome};
use crate::txn::{digest_outcome, digest_sequence, OpenAtEnd, TxAction, TxEntry, TxLog};
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
    pub(super) async fn run_local(&mut self, statements: &[Statement], shape: Shape) -> Result<Vec<StatementResult>, EngineError> {
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
            match local.execute(s, &limits, &*self).await {
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
    /// discards its local effects. Leaves no transaction open: one still open at the end
    /// is rolled back, and carried to the next request if the script says so.
    pub(super) async fn run_script_local(&mut self, script: &Script) -> Result<ScriptOutcome, EngineError> {
        let limits = self.config.limits;
        self.local()?.start_request(&limits);
        let mut outcomes: Vec<StepOutcome> = Vec::with_capacity(script.steps.len());
        // The interactive transaction in progress (its log so far), and the step that
        // opened the transaction open now (none if it was opened by an earlier request).
        let mut tx: Option<TxLog> = None;
        let mut opened_at: Option<usize> = None;
        if let Some(resume) = &script.resume {
            match self.replay_transaction(resume).await {
                Ok(()) => tx = Some(resume.clone()),
                Err(e) if e.is_client_error() => {
                    let local = self.local()?;
                    if local.in_transaction() {
                        local.exec_control("ROLLBACK").map_err(|e| local.missing_or(e))?;
                    }
                    local.pin_transaction(None);
                    let steps = script.steps.iter().map(|_| StepOutcome::Skipped).collect();
                    return Ok(ScriptOutcome { steps, resume_failed: Some(e), ..ScriptOutcome::default() });
                }
                Err(e) => return Err(e),
            }
        }
        let mut units = script.atomic_units.iter().peekable();
        let mut unit: Option<(std::ops::Range<usize>, UnitState)> = None;
        for (i, step) in script.steps.iter().enumerate() {
            if unit.is_none() && units.peek().is_some_and(|u| u.start == i) {
                let range = units.next().cloned().unwrap_or(i..i);
                unit = Some((range, UnitState { start_frames: self.local()?.wal_frames()?, committed: None, failed_after_commit: None }));
            }
            let applied_seq = self.applied_seq;
            let local = self.local()?;
            let autocommit = !local.in_transaction();
            let read_only_tx = tx.as_ref().is_some_and(|log| begins_read_only(&log.begin));
            let frames_before = local.wal_frames()?;
            let outcome = if !step.condition.as_ref().is_none_or(|c| c.holds(&outcomes, autocommit)) {
                StepOutcome::Skipped
            } else {
                match run_action(local, &step.action, autocommit, read_only_tx, &limits, &*self).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        if local.in_transaction() {
                            let _ = local.exec_control("ROLLBACK");
                        }
                        local.pin_transaction(None);
                        return Err(e);
                    }
                }
            };
            match (autocommit, local.in_transaction()) {
                (true, true) => {
                    opened_at = Some(i);
                    // The step opened a transaction: from here on SQL's clock and
                    // randomness are the transaction's, so later requests can replay it.
                    // (One opened inside a sequence cannot be replayed: it is rolled back
                    // at the end like any transaction that may not be carried.)
                    let Action::Execute(begin) = &step.action else {
                        tx = None;
                        outcomes.push(outcome);
                        continue;
                    };
                    let mut seed = [0u8; 8];
                    self.host.fill_random(&mut seed);
                    let log = TxLog {
                        begin: begin.sql.clone(),
                        begin_seq: applied_seq,
                        seen_seq: applied_seq,
                        started_ms: self.now_ms(),
                        seed: u64::from_le_bytes(seed),
                        entries: Vec::new(),
                    };
                    local.pin_transaction(Some((log.started_ms, log.seed)));
                    tx = Some(log);
                }
                (false, false) => {
                    tx = None;
                    opened_at = None;
                    local.pin_transaction(None);
                }
                (false, true) => {
                    if let (Some(log), Some(entry)) = (&mut tx, log_entry(&step.action, &outcome)) {
                        log.entries.push(entry);
                    }
                }
                (true, false) => {}
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
                    tx = None;
                    opened_at = None;
                }
            }
        }
        let applied_seq = self.applied_seq;
        let local = self.local()?;
        let mut result = ScriptOutcome { steps: outcomes, ..ScriptOutcome::default() };
        if local.in_transaction() {
            local.exec_control("ROLLBACK").map_err(|e| local.missing_or(e))?;
            match (script.open_at_end, tx.take()) {
                (OpenAtEnd::Carry, Some(mut log)) => {
                    log.seen_seq = log.seen_seq.max(applied_seq);
                    match log.check_limits() {
                        Ok(()) => result.carried = Some(log),
                        Err(e) => result.resume_failed = Some(e),
                    }
                }
                _ => result.rolled_back_from = Some(opened_at.unwrap_or(0)),
            }
        }
        local.pin_transaction(None);
        let missed = local.take_wanted();
        if !missed.is_empty() {
            return Err(EngineError::PagesMissing(missed));
        }
        Ok(result)
    }

    /// Opens the transaction `log` describes and runs its statements again, checking that
    /// each answers as it did before. Leaves the transaction open (and SQL's clock and
    /// randomness pinned to it) on success.
    async fn replay_transaction(&self, log: &TxLog) -> Result<(), EngineError> {
        let limits = self.config.limits;
        let local = self.local()?;
        if self.applied_seq < log.seen_seq {
            // The caller catches up first; behind still means the log is newer than the
            // database (another database's transaction, or one deleted since).
            return Err(EngineError::InvalidBookmark(format!(
                "the transaction ran on log position {} but the database's newest commit is {}",
                log.seen_seq, self.applied_seq
            )));
        }
        local.exec_control(&log.begin).map_err(|e| local.missing_or(e))?;
        local.pin_transaction(Some((log.started_ms, log.seed)));
        let read_only = begins_read_only(&log.begin);
        for (n, entry) in log.entries.iter().enumerate() {
            let action = match &entry.action {
                TxAction::Execute(s) => Action::Execute(s.clone()),
                TxAction::Sequence(sql) => Action::Sequence(sql.clone()),
            };
            let outcome = run_action(local, &action, false, read_only, &limits, self).await?;
            let missed = local.take_wanted();
            if !missed.is_empty() {
                return Err(EngineError::PagesMissing(missed));
            }
            if log_entry(&action, &outcome).map(|e| e.digest) != Some(entry.digest) {
                return Err(EngineError::TxConflict(format!(
                    "statement {} of the transaction answers differently on the current data (another writer changed what it read)",
                    n + 1
                )));
            }
            if !local.in_transaction() {
                return Err(EngineError::TxConflict(format!("statement {} of the transaction ended it on replay", n + 1)));
            }
        }
        Ok(())
    }

    /// Rolls back any open transaction and drops the WAL frames after `start_frames`
    /// (reopening turso). If reopening needs pages that are not cached (or failed), the
    /// local database is gone: the caller discards everything unshipped and runs the
    /// request again once they are fetched.
    pub(super) fn rewind_local(&mut self, start_frames: u64) -> Result<(), EngineError> {
        let local = self.local.take().ok_or_else(super::lost_local)?;
        if local.in_transaction() {
            let _ = local.exec_control("ROLLBACK");
        }
        match local.rewind(start_frames) {
            Ok(local) => {
                self.local = Some(local);
                Ok(())
            }
            Err((e, reopen)) => {
                let wanted = reopen.take_wanted();
                Err(if wanted.is_empty() { e } else { EngineError::PagesMissing(wanted) })
            }
        }
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
        self.rewind_local(start_frames)?;
        let why = format!(
            "step {} of this batch failed after step {} had committed; everything the batch did was undone (a batch is all or nothing)",
            failed - range.start,
            committed - range.start
        );
        for outcome in &mut outcomes[range] {
            if matches!(outcome, StepOutcome::Executed(_) | StepOutcome::Sequenced) {
                *outcome = StepOutcome::Undone(EngineError::Sql(SqlFailure { message: why.clone(), code: SqliteCode::Abort }));
            }
        }
        Ok(())
    }
}

/// Runs one step's action. `Ok` holds the step's outcome (a failure the client sees is an
/// outcome too); `Err` is a failure of the engine (or pages to fetch).
async fn run_action(
    local: &LocalDb,
    action: &Action,
    autocommit: bool,
    read_only_tx: bool,
    limits: &crate::local::ExecLimits,
    pages: &dyn PageSource,
) -> Result<StepOutcome, EngineError> {
    let writes_refused =
        || EngineError::NotAllowed("this is a read-only transaction (BEGIN READONLY); the statement may write".into());
    let result = match action {
        Action::Execute(statement) => {
            match check_script_statement(&statement.sql).and_then(|kind| {
                if read_only_tx && kind == StatementKind::Write { Err(writes_refused()) } else { Ok(()) }
            }) {
                Ok(()) => local.execute(statement, limits, pages).await.map(StepOutcome::Executed),
                Err(e) => Err(e),
            }
        }
        Action::Sequence(sql) => {
            let check = |text: &str| match check_script_statement(text)? {
                StatementKind::Write if read_only_tx => Err(writes_refused()),
                _ => Ok(()),
            };
            local.execute_sequence(sql, limits, check, pages).await.map(|()| StepOutcome::Sequenced)
        }
        Action::Describe(sql) => local.describe(sql, pages).await.map(StepOutcome::Described),
        Action::GetAutocommit => Ok(StepOutcome::Autocommit(autocommit)),
    };
    match result {
        Ok(outcome) => Ok(outcome),
        Err(e) => match local.missing_or(e) {
            e if e.is_client_error() => Ok(StepOutcome::Failed(e)),
            e => Err(e),
        },
    }
}

/// What an interactive transaction's log records of a step run inside it: statements and
/// sequences with the digest of their outcome (transaction control, descriptions and
/// autocommit queries change nothing a replay needs).
fn log_entry(action: &Action, outcome: &StepOutcome) -> Option<TxEntry> {
    let (action, digest) = match (action, outcome) {
        (Action::Execute(s), _) if is_transaction_control(&s.sql) => return None,
        (Action::Execute(s), StepOutcome::Executed(r)) => (TxAction::Execute(s.clone()), digest_outcome(Ok(r))),
        (Action::Execute(s), StepOutcome::Failed(e)) => (TxAction::Execute(s.clone()), digest_outcome(Err(e))),
        (Action::Sequence(sql), StepOutcome::Sequenced) => (TxAction::Sequence(sql.clone()), digest_sequence(Ok(()))),
        (Action::Sequence(sql), StepOutcome::Failed(e)) => (TxAction::Sequence(sql.clone()), digest_sequence(Err(e))),
        _ => return None,
    };
    Some(TxEntry { action, digest })
}
