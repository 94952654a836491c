//! Interactive transactions across requests: carried as a log between scripts, replayed
//! and checked on whatever replica runs the next request, committed through the usual
//! protocol, and serializable.

use std::rc::Rc;

use engine_core::mem_store::{MemStore, SplitMix64};
use engine_core::script::{Action, Script, Step, StepOutcome};
use engine_core::txn::{OpenAtEnd, TxLog};
use engine_core::{Database, EngineError, SqlValue, Statement};
use twill_tests::{block_on, exec, open, query_ints};

/// One request of an interactive transaction: its statements, continuing `tx`.
fn request(db: &mut Database, tx: Option<TxLog>, sqls: &[&str]) -> (Vec<StepOutcome>, Option<TxLog>, Option<EngineError>) {
    let steps = sqls.iter().map(|s| Step::always(Action::Execute(Statement::new(*s)))).collect();
    let script = Script { steps, resume: tx, open_at_end: OpenAtEnd::Carry, ..Script::default() };
    let (out, _) = block_on(db.run_script(script)).expect("script runs");
    (out.steps, out.carried, out.resume_failed)
}

fn rows(outcome: &StepOutcome) -> Vec<Vec<SqlValue>> {
    match outcome {
        StepOutcome::Executed(r) => r.rows.clone(),
        other => panic!("expected rows, got {other:?}"),
    }
}

#[test]
fn a_transaction_spans_requests_and_replicas_and_commits_once() {
    let store = Rc::new(MemStore::new());
    let mut a = open(&store, "tx");
    exec(&mut a, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", vec![]);
    let mut b = open(&store, "tx");

    let (_, tx, err) = request(&mut a, None, &["BEGIN", "INSERT INTO t (v) VALUES ('one')"]);
    assert!(err.is_none());
    let tx = tx.expect("left open, carried");
    assert_eq!(tx.entries.len(), 1);
    // Nothing is visible outside the transaction, on any replica.
    assert_eq!(query_ints(&mut a, "SELECT count(*) FROM t"), [0]);
    assert_eq!(query_ints(&mut b, "SELECT count(*) FROM t"), [0]);

    // The next request lands on another replica: it replays and continues.
    let (steps, tx, err) = request(&mut b, Some(tx), &["INSERT INTO t (v) VALUES ('two')", "SELECT v FROM t ORDER BY id"]);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(rows(&steps[1]), vec![vec![SqlValue::Text("one".into())], vec![SqlValue::Text("two".into())]]);
    let (steps, tx, err) = request(&mut a, tx, &["COMMIT"]);
    assert!(err.is_none() && tx.is_none(), "committed: {steps:?} {err:?}");
    assert!(steps[0].succeeded());
    assert_eq!(query_ints(&mut b, "SELECT count(*) FROM t"), [2]);
    assert_eq!(query_ints(&mut open(&store, "tx"), "SELECT count(*) FROM t"), [2]);
}

#[test]
fn a_transaction_whose_reads_changed_conflicts_and_one_whose_reads_held_commits() {
    let store = Rc::new(MemStore::new());
    let mut a = open(&store, "c");
    exec(&mut a, "CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)", vec![]);
    exec(&mut a, "INSERT INTO acct VALUES (1, 100), (2, 100), (3, 0)", vec![]);
    let mut other = open(&store, "c");

    // Reads account 1, then someone else changes it: the transaction cannot go on.
    let (_, tx, _) = request(&mut a, None, &["BEGIN IMMEDIATE", "SELECT bal FROM acct WHERE id = 1"]);
    exec(&mut other, "UPDATE acct SET bal = 50 WHERE id = 1", vec![]);
    let (steps, carried, err) = request(&mut a, tx, &["UPDATE acct SET bal = bal - 10 WHERE id = 1"]);
    assert_eq!(err.as_ref().map(EngineError::code), Some("TRANSACTION_CONFLICT"), "{steps:?}");
    assert!(carried.is_none());
    assert!(steps.iter().all(|s| *s == StepOutcome::Skipped), "nothing ran");
    assert_eq!(query_ints(&mut other, "SELECT bal FROM acct WHERE id = 1"), [50]);

    // Reads account 2 while someone changes account 3: it commits after them.
    let (_, tx, _) = request(&mut a, None, &["BEGIN", "SELECT bal FROM acct WHERE id = 2"]);
    exec(&mut other, "UPDATE acct SET bal = 7 WHERE id = 3", vec![]);
    let (_, tx, err) = request(&mut a, tx, &["UPDATE acct SET bal = bal - 10 WHERE id = 2"]);
    assert!(err.is_none(), "{err:?}");
    let (steps, _, err) = request(&mut other, tx, &["COMMIT"]);
    assert!(err.is_none() && steps[0].succeeded(), "{steps:?} {err:?}");
    assert_eq!(query_ints(&mut a, "SELECT bal FROM acct ORDER BY id"), [50, 90, 7]);
}

#[test]
fn random_values_and_failed_statements_replay_identically() {
    let store = Rc::new(MemStore::new());
    let mut a = open(&store, "r");
    exec(&mut a, "CREATE TABLE t (id INTEGER PRIMARY KEY, r INTEGER)", vec![]);
    exec(&mut a, "INSERT INTO t VALUES (1, 0)", vec![]);
    let mut b = open(&store, "r");
    let (steps, tx, _) =
        request(&mut a, None, &["BEGIN", "SELECT random(), hex(randomblob(8))", "INSERT INTO t VALUES (1, 5)"]);
    let first = rows(&steps[1]);
    assert!(matches!(steps[2], StepOutcome::Failed(_)), "duplicate key fails inside the transaction");
    let (steps, tx, err) = request(&mut b, tx, &["INSERT INTO t (r) SELECT random()", "SELECT random()"]);
    assert!(err.is_none(), "random values and the failure replayed as they were: {err:?}");
    assert_ne!(rows(&steps[1]), first, "the sequence goes on, it does not repeat");
    let (_, _, err) = request(&mut a, tx, &["COMMIT"]);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(query_ints(&mut b, "SELECT count(*) FROM t"), [2]);
}

#[test]
fn read_only_transactions_refuse_writes_and_limits_end_a_transaction() {
    let store = Rc::new(MemStore::new());
    let mut a = open(&store, "l");
    exec(&mut a, "CREATE TABLE t (x)", vec![]);
    let (_, tx, _) = request(&mut a, None, &["BEGIN TRANSACTION READONLY", "SELECT count(*) FROM t"]);
    let (steps, tx, _) = request(&mut a, tx, &["INSERT INTO t VALUES (1)"]);
    assert!(matches!(&steps[0], StepOutcome::Failed(EngineError::NotAllowed(_))), "{steps:?}");
    let (_, tx, err) = request(&mut a, tx, &["ROLLBACK"]);
    assert!(tx.is_none() && err.is_none());

    let many: Vec<String> = (0..engine_core::txn::MAX_TX_STATEMENTS + 1).map(|i| format!("INSERT INTO t VALUES ({i})")).collect();
    let mut sqls = vec!["BEGIN"];
    sqls.extend(many.iter().map(String::as_str));
    let (_, tx, err) = request(&mut a, None, &sqls);
    assert!(tx.is_none());
    assert_eq!(err.as_ref().map(EngineError::code), Some("LIMIT_EXCEEDED"));
    assert_eq!(query_ints(&mut a, "SELECT count(*) FROM t"), [0], "rolled back");
}

/// Transfers between accounts as interactive transactions of three requests each, from
/// several replicas, interleaved at random: every committed transfer applied exactly
/// once, the total unchanged, and the committed history serializable (each transfer saw
/// the balances the ones before it left).
#[test]
fn concurrent_transfers_keep_the_total_and_apply_exactly_once() {
    let store = Rc::new(MemStore::new());
    let mut setup = open(&store, "bank");
    exec(&mut setup, "CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)", vec![]);
    exec(&mut setup, "CREATE TABLE transfer (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER)", vec![]);
    exec(&mut setup, "INSERT INTO acct VALUES (1, 1000), (2, 1000), (3, 1000), (4, 1000), (5, 1000)", vec![]);
    let mut replicas: Vec<Database> = (0..3).map(|_| open(&store, "bank")).collect();
    let mut rng = SplitMix64(20261129);
    struct Transfer {
        id: i64,
        src: i64,
        dst: i64,
        amount: i64,
        stage: u8,
        tx: Option<TxLog>,
    }
    let mut live: Vec<Transfer> = Vec::new();
    let mut committed = Vec::new();
    let mut next_id = 1;
    for _ in 0..400 {
        if live.len() < 4 && rng.below(3) == 0 {
            let src = 1 + rng.below(5) as i64;
            let dst = 1 + (src + rng.below(4) as i64) % 5;
            live.push(Transfer { id: next_id, src, dst, amount: 1 + rng.below(50) as i64, stage: 0, tx: None });
            next_id += 1;
            continue;
        }
        if live.is_empty() {
            continue;
        }
        let k = rng.below(live.len() as u64) as usize;
        let r = rng.below(replicas.len() as u64) as usize;
        let t = &mut live[k];
        let db = &mut replicas[r];
        let result = match t.stage {
            0 => request(db, None, &["BEGIN", &format!("SELECT bal FROM acct WHERE id = {}", t.src)]),
            1 => request(
                db,
                t.tx.take(),
                &[
                    &format!("UPDATE acct SET bal = bal - {} WHERE id = {}", t.amount, t.src),
                    &format!("UPDATE acct SET bal = bal + {} WHERE id = {}", t.amount, t.dst),
                ],
            ),
            _ => request(
                db,
                t.tx.take(),
                &[&format!("INSERT INTO transfer VALUES ({}, {}, {}, {})", t.id, t.src, t.dst, t.amount), "COMMIT"],
            ),
        };
        let (steps, tx, err) = result;
        match (t.stage, err) {
            (_, Some(e)) => {
                assert_eq!(e.code(), "TRANSACTION_CONFLICT", "{e}");
                live.remove(k);
            }
            (2, None) => {
                assert!(steps[1].succeeded(), "{steps:?}");
                committed.push(t.id);
                live.remove(k);
            }
            (_, None) => {
                t.tx = Some(tx.expect("still open"));
                t.stage += 1;
            }
        }
    }
    assert!(committed.len() >= 10, "only {} transfers committed", committed.len());
    let mut check = open(&store, "bank");
    assert_eq!(query_ints(&mut check, "SELECT sum(bal) FROM acct"), [5000], "the total never changes");
    let mut ids = query_ints(&mut check, "SELECT id FROM transfer ORDER BY id");
    committed.sort();
    assert_eq!(ids, committed.clone(), "every acknowledged transfer exactly once, nothing else");
    // Serial order: replaying the committed transfers in commit order from the initial
    // balances gives the final balances.
    ids.clear();
    let log = block_on(check.transact(&[Statement::new("SELECT src, dst, amount FROM transfer")])).unwrap();
    let mut bal = [1000i64; 6];
    for row in &log.results[0].rows {
        let int = |v: &SqlValue| match v {
            SqlValue::Integer(i) => *i,
            _ => panic!(),
        };
        bal[int(&row[0]) as usize] -= int(&row[2]);
        bal[int(&row[1]) as usize] += int(&row[2]);
    }
    assert_eq!(query_ints(&mut check, "SELECT bal FROM acct ORDER BY id"), bal[1..].to_vec());
}

/// `PRAGMA defer_foreign_keys` lasts until the interactive transaction ends, on whichever
/// replica continues it (the replay runs the pragma again), and its orphans fail the COMMIT.
#[test]
fn defer_foreign_keys_lasts_until_commit_across_replicas() {
    let store = Rc::new(MemStore::new());
    let mut a = open(&store, "fk");
    exec(&mut a, "CREATE TABLE u (id INTEGER PRIMARY KEY)", vec![]);
    exec(&mut a, "CREATE TABLE p (id INTEGER PRIMARY KEY, u INTEGER REFERENCES u (id))", vec![]);
    let mut b = open(&store, "fk");

    let (steps, tx, err) = request(&mut a, None, &["BEGIN", "PRAGMA defer_foreign_keys = ON", "INSERT INTO p VALUES (1, 10)"]);
    assert!(err.is_none() && steps.iter().all(StepOutcome::succeeded), "{steps:?} {err:?}");
    let (steps, tx, err) = request(&mut b, tx, &["INSERT INTO p VALUES (2, 20)", "INSERT INTO u VALUES (10), (20)", "COMMIT"]);
    assert!(err.is_none() && tx.is_none() && steps.iter().all(StepOutcome::succeeded), "{steps:?} {err:?}");
    assert_eq!(query_ints(&mut a, "SELECT count(*) FROM p"), [2]);

    // An orphan left at COMMIT fails it, and nothing of the transaction lands.
    let (_, tx, _) = request(&mut a, None, &["BEGIN", "PRAGMA defer_foreign_keys = ON", "INSERT INTO p VALUES (3, 30)"]);
    let (steps, _, err) = request(&mut b, tx, &["COMMIT"]);
    assert!(err.is_none(), "{err:?}");
    assert!(matches!(&steps[0], StepOutcome::Failed(e) if e.to_string().contains("FOREIGN KEY")), "{steps:?}");
    assert_eq!(query_ints(&mut open(&store, "fk"), "SELECT count(*) FROM p"), [2]);
    // After the transaction, foreign keys are immediate again.
    let e = block_on(b.transact(&[Statement::new("INSERT INTO p VALUES (4, 40)")])).unwrap_err();
    assert!(e.to_string().contains("FOREIGN KEY"), "{e}");
}
