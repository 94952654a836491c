//! Scripts: steps run in order on one connection, each guarded by a condition on earlier
//! steps, with the script itself in charge of transactions (BEGIN/COMMIT/ROLLBACK).
//! This is what Hrana's pipelines and batches need; a plain request is a transaction the
//! engine begins and commits instead.
//!
//! A script is one unit of durability: whatever it commits locally (one or several
//! transactions) ships as one log record before any of its results are returned. A
//! transaction it leaves open is rolled back at its end (or, for Hrana's interactive
//! transactions, carried to the next request by the caller).

use crate::error::EngineError;
use crate::txn::{OpenAtEnd, TxLog};
use crate::value::{Description, Statement, StatementResult};

/// When a step runs. Steps are numbered from 0 within the script.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Step `n` ran and succeeded.
    Ok(usize),
    /// Step `n` ran and failed.
    Error(usize),
    Not(Box<Cond>),
    And(Vec<Cond>),
    Or(Vec<Cond>),
    /// No transaction is open.
    IsAutocommit,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// One statement with its parameters; transaction control is allowed.
    Execute(Statement),
    /// Several statements without parameters; their rows are discarded.
    Sequence(String),
    /// Prepare one statement and report its parameters and columns.
    Describe(String),
    /// Report whether a transaction is open.
    GetAutocommit,
}

/// Steps, and which runs of them are all-or-nothing units (Hrana batches).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Script {
    pub steps: Vec<Step>,
    /// Ranges of step indexes, in order and disjoint. If a step of a unit fails after the
    /// unit committed something (its own `COMMIT`, or a statement run in autocommit after
    /// the unit's transaction ended early, e.g. by the client's own `ROLLBACK`), everything
    /// the unit committed is undone: a batch the client sees fail leaves nothing behind.
    pub atomic_units: Vec<std::ops::Range<usize>>,
    /// An interactive transaction an earlier request left open: it is replayed (and
    /// checked) first, and the steps continue inside it.
    pub resume: Option<TxLog>,
    /// What becomes of a transaction still open after the last step.
    pub open_at_end: OpenAtEnd,
}

impl Script {
    /// Steps with no all-or-nothing units; a transaction left open is rolled back.
    pub fn new(steps: Vec<Step>) -> Self {
        Script { steps, ..Script::default() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub condition: Option<Cond>,
    pub action: Action,
}

impl Step {
    pub fn always(action: Action) -> Self {
        Step { condition: None, action }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// Its condition was false.
    Skipped,
    Executed(StatementResult),
    /// A sequence ran to its end.
    Sequenced,
    Described(Description),
    Autocommit(bool),
    Failed(EngineError),
    /// It ran, but its all-or-nothing unit failed later and everything the unit did was
    /// undone; the error says which step failed.
    Undone(EngineError),
}

impl StepOutcome {
    pub fn succeeded(&self) -> bool {
        !matches!(self, StepOutcome::Skipped | StepOutcome::Failed(_) | StepOutcome::Undone(_))
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScriptOutcome {
    pub steps: Vec<StepOutcome>,
    /// The script left a transaction open, begun at this step; the engine rolled it back,
    /// so that step and every later one changed nothing ([`OpenAtEnd::RollBack`]).
    pub rolled_back_from: Option<usize>,
    /// The transaction the script left open, to continue in the next request
    /// ([`OpenAtEnd::Carry`]).
    pub carried: Option<TxLog>,
    /// The transaction to resume could not continue (it conflicts, or hit a limit): it is
    /// over, and no step ran.
    pub resume_failed: Option<EngineError>,
}

impl Cond {
    /// Evaluates against the outcomes of the steps so far. A step not yet run (or not in
    /// the script) has neither succeeded nor failed.
    pub fn holds(&self, done: &[StepOutcome], autocommit: bool) -> bool {
        match self {
            Cond::Ok(n) => done.get(*n).is_some_and(StepOutcome::succeeded),
            Cond::Error(n) => matches!(done.get(*n), Some(StepOutcome::Failed(_) | StepOutcome::Undone(_))),
            Cond::Not(c) => !c.holds(done, autocommit),
            Cond::And(cs) => cs.iter().all(|c| c.holds(done, autocommit)),
            Cond::Or(cs) => cs.iter().any(|c| c.holds(done, autocommit)),
            Cond::IsAutocommit => autocommit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_follow_earlier_outcomes() {
        let done = vec![
            StepOutcome::Sequenced,
            StepOutcome::Failed(EngineError::sql("x")),
            StepOutcome::Skipped,
        ];
        assert!(Cond::Ok(0).holds(&done, true));
        assert!(!Cond::Ok(1).holds(&done, true));
        assert!(Cond::Error(1).holds(&done, true));
        assert!(!Cond::Ok(2).holds(&done, true) && !Cond::Error(2).holds(&done, true));
        assert!(!Cond::Ok(7).holds(&done, true));
        assert!(Cond::And(vec![Cond::Ok(0), Cond::Not(Box::new(Cond::Ok(1)))]).holds(&done, true));
        assert!(!Cond::Or(vec![]).holds(&done, true));
        assert!(Cond::And(vec![]).holds(&done, true));
        assert!(!Cond::IsAutocommit.holds(&done, false));
    }
}
