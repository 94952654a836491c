//! Scripts (what Hrana pipelines and batches become): conditions, transaction control
//! owned by the script, sequences, describe, and the rule that no transaction outlives
//! its request.

use std::rc::Rc;

use engine_core::mem_store::MemStore;
use engine_core::script::{Action, Cond, Script, Step, StepOutcome};
use engine_core::{EngineError, SqlValue, Statement};
use twill_tests::{block_on, open, query_ints};

fn exec_step(sql: &str) -> Step {
    Step::always(Action::Execute(Statement::new(sql)))
}

fn when(cond: Cond, sql: &str) -> Step {
    Step { condition: Some(cond), action: Action::Execute(Statement::new(sql)) }
}

/// The shape `@libsql/client` sends for `batch()`: BEGIN, statements each conditioned on
/// the one before, COMMIT, and ROLLBACK unless the COMMIT succeeded.
fn libsql_batch(statements: &[&str]) -> Script {
    let mut steps = vec![exec_step("BEGIN IMMEDIATE")];
    for (i, sql) in statements.iter().enumerate() {
        steps.push(when(Cond::And(vec![Cond::Ok(i), Cond::Not(Box::new(Cond::IsAutocommit))]), sql));
    }
    let last = statements.len();
    steps.push(when(Cond::And(vec![Cond::Ok(last), Cond::Not(Box::new(Cond::IsAutocommit))]), "COMMIT"));
    steps.push(when(Cond::Not(Box::new(Cond::Ok(last + 1))), "ROLLBACK"));
    Script { atomic_units: vec![0..steps.len()], steps, ..Script::default() }
}

#[test]
fn conditional_batches_commit_all_or_roll_back_all() {
    let store = Rc::new(MemStore::new());
    let mut db = open(&store, "s");
    let (ok, _) = block_on(db.run_script(libsql_batch(&[
        "CREATE TABLE t(x INTEGER PRIMARY KEY)",
        "INSERT INTO t VALUES (1)",
        "INSERT INTO t VALUES (2)",
    ])))
    .unwrap();
    assert!(ok.steps[..5].iter().all(StepOutcome::succeeded), "{:?}", ok.steps);
    assert_eq!(ok.steps[5], StepOutcome::Skipped, "no rollback after a commit");
    assert_eq!(ok.rolled_back_from, None);

    let (failed, _) =
        block_on(db.run_script(libsql_batch(&["INSERT INTO t VALUES (3)", "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (4)"])))
            .unwrap();
    assert!(failed.steps[1].succeeded());
    assert!(matches!(failed.steps[2], StepOutcome::Failed(EngineError::Sql(_))), "{:?}", failed.steps[2]);
    assert_eq!(failed.steps[3], StepOutcome::Skipped);
    assert_eq!(failed.steps[4], StepOutcome::Skipped, "no commit");
    assert!(failed.steps[5].succeeded(), "rollback ran");
    assert_eq!(query_ints(&mut db, "SELECT x FROM t ORDER BY x"), vec![1, 2]);

    // Durable: a fresh replica sees exactly the committed batch.
    let mut other = open(&store, "s");
    assert_eq!(query_ints(&mut other, "SELECT x FROM t ORDER BY x"), vec![1, 2]);
}

#[test]
fn autocommit_steps_fail_alone_and_open_transactions_never_outlive_the_script() {
    let store = Rc::new(MemStore::new());
    let mut db = open(&store, "s");
    let (out, stats) = block_on(db.run_script(Script::new(vec![
        exec_step("CREATE TABLE t(x INTEGER PRIMARY KEY)"),
        exec_step("INSERT INTO t VALUES (1)"),
        exec_step("INSERT INTO t VALUES (1)"),
        exec_step("INSERT INTO t VALUES (2)"),
        when(Cond::Error(2), "INSERT INTO t VALUES (3)"),
        Step::always(Action::GetAutocommit),
        exec_step("BEGIN"),
        Step::always(Action::GetAutocommit),
        exec_step("INSERT INTO t VALUES (100)"),
    ])))
    .unwrap();
    assert!(matches!(out.steps[2], StepOutcome::Failed(_)));
    assert_eq!(out.steps[5], StepOutcome::Autocommit(true));
    assert_eq!(out.steps[7], StepOutcome::Autocommit(false));
    assert_eq!(out.rolled_back_from, Some(6), "the transaction begun at step 6 was left open");
    assert_eq!(stats.records_committed, 1, "every local commit of a script ships as one record");
    assert_eq!(query_ints(&mut db, "SELECT x FROM t ORDER BY x"), vec![1, 2, 3]);
    let mut other = open(&store, "s");
    assert_eq!(query_ints(&mut other, "SELECT x FROM t ORDER BY x"), vec![1, 2, 3]);
}

#[test]
fn sequences_describe_and_guards() {
    let store = Rc::new(MemStore::new());
    let mut db = open(&store, "s");
    let (out, _) = block_on(db.run_script(Script::new(vec![
        Step::always(Action::Sequence(
            "CREATE TABLE a(x); INSERT INTO a VALUES (1); -- comment\n INSERT INTO a VALUES (2);".into(),
        )),
        Step::always(Action::Describe("SELECT x AS v FROM a WHERE x > :min AND x < ?".into())),
        Step::always(Action::Sequence("INSERT INTO a VALUES (3); ATTACH 'x' AS y".into())),
        exec_step("VACUUM"),
        Step::always(Action::Sequence("INSERT INTO a VALUES (?)".into())),
        Step::always(Action::Describe("DELETE FROM a".into())),
    ])))
    .unwrap();
    assert_eq!(out.steps[0], StepOutcome::Sequenced);
    let StepOutcome::Described(d) = &out.steps[1] else { panic!("{:?}", out.steps[1]) };
    assert_eq!(d.params, vec![Some(":min".to_string()), None]);
    assert_eq!(d.columns[0].0, "v");
    assert!(d.is_readonly && !d.is_explain);
    assert!(matches!(&out.steps[2], StepOutcome::Failed(EngineError::NotAllowed(_))), "{:?}", out.steps[2]);
    assert!(matches!(&out.steps[3], StepOutcome::Failed(EngineError::NotAllowed(_))));
    assert!(matches!(&out.steps[4], StepOutcome::Failed(EngineError::Params(_))));
    let StepOutcome::Described(d) = &out.steps[5] else { panic!() };
    assert!(!d.is_readonly);
    // The sequence stopped at ATTACH; the INSERT before it (autocommit) stands.
    assert_eq!(query_ints(&mut db, "SELECT x FROM a ORDER BY x"), vec![1, 2, 3]);
}

/// turso's MVCC engine is not in this build (patches/turso_core-0.8.3.patch, item 16): a
/// script's `BEGIN CONCURRENT` fails as a statement, leaves the script in autocommit and the
/// database as it was, and a libSQL batch opened that way commits nothing.
#[test]
fn begin_concurrent_fails_as_a_statement_without_mvcc() {
    let store = Rc::new(MemStore::new());
    let mut db = open(&store, "s");
    twill_tests::exec(&mut db, "CREATE TABLE t(x)", vec![]);
    let (out, _) = block_on(db.run_script(Script::new(vec![
        exec_step("BEGIN CONCURRENT"),
        Step::always(Action::GetAutocommit),
        exec_step("SELECT count(*) FROM t"),
    ])))
    .unwrap();
    let StepOutcome::Failed(e) = &out.steps[0] else { panic!("{:?}", out.steps[0]) };
    assert!(e.to_string().contains("MVCC"), "{e}");
    assert_eq!(out.steps[1], StepOutcome::Autocommit(true));
    assert!(out.steps[2].succeeded());

    let mut batch = libsql_batch(&["INSERT INTO t VALUES (1)"]);
    batch.steps[0] = exec_step("BEGIN CONCURRENT");
    let (out, _) = block_on(db.run_script(batch)).unwrap();
    assert!(matches!(out.steps[0], StepOutcome::Failed(_)), "{:?}", out.steps[0]);
    assert_eq!(out.steps[1], StepOutcome::Skipped);
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM t"), vec![0]);
    assert_eq!(query_ints(&mut open(&store, "s"), "SELECT count(*) FROM t"), vec![0]);
}

#[test]
fn a_runaway_query_is_interrupted_and_changes_nothing() {
    let store = Rc::new(MemStore::new());
    let mut db = open(&store, "s");
    twill_tests::exec(&mut db, "CREATE TABLE t(x)", vec![]);
    db.config_mut().limits.max_vm_steps = 200_000;
    let err = block_on(db.transact(&[
        Statement::new("INSERT INTO t VALUES (1)"),
        Statement::new("WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT max(x) FROM r"),
    ]))
    .unwrap_err();
    assert_eq!(err.code(), "QUERY_INTERRUPTED", "{err}");
    // The budget is per request: the next request runs normally.
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM t"), vec![0]);
    let r = twill_tests::exec(&mut db, "SELECT ?", vec![SqlValue::Integer(7)]);
    assert_eq!(r.rows, vec![vec![SqlValue::Integer(7)]]);
}

/// `@libsql/client`'s batch as Hrana v2 sends it: statements conditioned only on the one
/// before (v3 adds "not autocommit", which a v2 server cannot evaluate).
fn libsql_batch_v2(statements: &[&str]) -> Script {
    let mut steps = vec![exec_step("BEGIN DEFERRED")];
    for (i, sql) in statements.iter().enumerate() {
        steps.push(when(Cond::Ok(i), sql));
    }
    let last = statements.len();
    steps.push(when(Cond::Ok(last), "COMMIT"));
    steps.push(when(Cond::Not(Box::new(Cond::Ok(last + 1))), "ROLLBACK"));
    Script { atomic_units: vec![0..steps.len()], steps, ..Script::default() }
}

fn undone(outcome: &StepOutcome) -> bool {
    matches!(outcome, StepOutcome::Undone(_))
}

#[test]
fn a_batch_with_the_clients_own_rollback_or_commit_commits_nothing() {
    let store = Rc::new(MemStore::new());
    let mut db = open(&store, "b");
    twill_tests::exec(&mut db, "CREATE TABLE t(x INTEGER PRIMARY KEY)", vec![]);

    // The user's ROLLBACK ends the batch's transaction; the statement after it would run
    // in autocommit and commit, while the batch's COMMIT fails.
    let (out, _) = block_on(db.run_script(libsql_batch_v2(&["INSERT INTO t VALUES (1)", "ROLLBACK", "INSERT INTO t VALUES (2)"])))
        .unwrap();
    assert!(matches!(out.steps[4], StepOutcome::Failed(_)), "the batch's COMMIT failed: {:?}", out.steps[4]);
    assert!(undone(&out.steps[3]), "the INSERT after ROLLBACK was undone: {:?}", out.steps[3]);
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM t"), [0]);

    // The user's own COMMIT in the middle: the batch fails later, so nothing stays.
    let (out, _) = block_on(db.run_script(libsql_batch_v2(&["INSERT INTO t VALUES (3)", "COMMIT", "INSERT INTO t VALUES (4)"])))
        .unwrap();
    assert!(undone(&out.steps[1]) && undone(&out.steps[3]), "{:?}", out.steps);
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM t"), [0]);

    // INSERT OR ROLLBACK that fails ends the transaction; unconditioned steps after it
    // would run in autocommit.
    twill_tests::exec(&mut db, "INSERT INTO t VALUES (9)", vec![]);
    let steps = vec![
        exec_step("BEGIN"),
        exec_step("INSERT INTO t VALUES (5)"),
        exec_step("INSERT OR ROLLBACK INTO t VALUES (9)"),
        exec_step("INSERT INTO t VALUES (6)"),
        exec_step("COMMIT"),
    ];
    let (out, _) = block_on(db.run_script(Script { atomic_units: vec![0..steps.len()], steps, ..Script::default() })).unwrap();
    assert!(matches!(out.steps[2], StepOutcome::Failed(_)), "{:?}", out.steps[2]);
    assert_eq!(query_ints(&mut db, "SELECT x FROM t ORDER BY x"), [9]);

    // Every replica agrees: nothing of the failed batches was ever shipped.
    let mut other = open(&store, "b");
    assert_eq!(query_ints(&mut other, "SELECT x FROM t ORDER BY x"), [9]);
}

#[test]
fn a_batch_that_handles_an_error_with_a_condition_still_commits() {
    let store = Rc::new(MemStore::new());
    let mut db = open(&store, "b");
    twill_tests::exec(&mut db, "CREATE TABLE t(x INTEGER PRIMARY KEY, n INTEGER)", vec![]);
    twill_tests::exec(&mut db, "INSERT INTO t VALUES (1, 0)", vec![]);
    // Insert, or if that fails, update: the failure comes before anything committed.
    let steps = vec![exec_step("INSERT INTO t VALUES (1, 0)"), when(Cond::Error(0), "UPDATE t SET n = n + 1 WHERE x = 1")];
    let (out, _) = block_on(db.run_script(Script { atomic_units: vec![0..2], steps, ..Script::default() })).unwrap();
    assert!(out.steps[1].succeeded());
    assert_eq!(query_ints(&mut db, "SELECT n FROM t"), [1]);
    // Two transactions in one batch, both fine.
    let (out, _) = block_on(db.run_script(libsql_batch_v2(&["INSERT INTO t VALUES (2, 0)"]))).unwrap();
    assert!(out.steps[..3].iter().all(StepOutcome::succeeded), "{:?}", out.steps);
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM t"), [2]);
}

#[test]
fn connection_settings_never_leak_from_one_request_to_the_next() {
    let store = Rc::new(MemStore::new());
    let mut db = open(&store, "fk");
    twill_tests::exec(&mut db, "CREATE TABLE p(id INTEGER PRIMARY KEY)", vec![]);
    twill_tests::exec(&mut db, "CREATE TABLE c(id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id) ON DELETE CASCADE)", vec![]);
    // Enforced by default.
    let e = block_on(db.transact(&[Statement::new("INSERT INTO c VALUES (1, 42)")])).unwrap_err();
    assert_eq!(e.code(), "SQL_ERROR", "{e}");
    // A request may turn enforcement off for itself...
    block_on(db.run_script(Script::new(vec![exec_step("PRAGMA foreign_keys = OFF"), exec_step("INSERT INTO c VALUES (1, 42)")])))
        .map(|(out, _)| assert!(out.steps.iter().all(StepOutcome::succeeded), "{:?}", out.steps))
        .unwrap();
    // ...and the next request on this replica starts from the default again.
    let e = block_on(db.transact(&[Statement::new("INSERT INTO c VALUES (2, 43)")])).unwrap_err();
    assert_eq!(e.code(), "SQL_ERROR", "{e}");
    // Cascades work.
    twill_tests::exec(&mut db, "INSERT INTO p VALUES (7)", vec![]);
    twill_tests::exec(&mut db, "INSERT INTO c VALUES (3, 7)", vec![]);
    twill_tests::exec(&mut db, "DELETE FROM p WHERE id = 7", vec![]);
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM c WHERE p = 7"), [0]);
}
