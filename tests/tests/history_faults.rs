//! Restores, forks, deletions and imports (in one request or an upload session) under seeded
//! store faults and crashes, and at every operation boundary of each: an answer that
//! promises something keeps it, every commit in the window stays readable, and a deletion
//! never takes what a fork uses. `TWILL_HISTORY_SEEDS=N` runs N seeds (default 300),
//! `TWILL_HISTORY_SEED=S` replays one.

use std::rc::Rc;
use std::sync::Arc;

use engine_core::dst::SimHost;
use engine_core::mem_store::{Fault, FaultInjector, MemStore, OpKind, ScriptedFaults, SeededFaults};
use engine_core::{Database, DbConfig, DbContext, DeleteMode, EngineError, SqlValue, Statement};
use twill_tests::block_on;

const WINDOW_MS: f64 = 3_600_000.0;

fn config() -> DbConfig {
    DbConfig {
        checkpoint_records: 3,
        gc_retention_ms: 0.0,
        history_retention_ms: WINDOW_MS,
        orphan_sweep_interval_ms: 0.0,
        ..DbConfig::default()
    }
}

fn open(store: &Rc<MemStore>, host: &Arc<SimHost>, name: &str) -> Result<Database, EngineError> {
    let ctx = DbContext::new(store.clone()).with_host(host.clone()).with_sleeper(engine_core::dst::sleeper(host));
    block_on(Database::open(ctx, engine_core::Layout::new("", name), config()))
}

fn count(db: &mut Database) -> Result<i64, EngineError> {
    let r = block_on(db.transact(&[Statement::new("SELECT count(*) FROM t")]))?;
    match r.results[0].rows[0][0] {
        SqlValue::Integer(n) => Ok(n),
        ref v => panic!("count is {v:?}"),
    }
}

fn insert(db: &mut Database, v: i64) -> Result<u64, EngineError> {
    block_on(db.transact(&[Statement::with_params("INSERT INTO t (v) VALUES (?)", vec![SqlValue::Integer(v)])]))?;
    Ok(db.applied_seq())
}

/// What a failed answer promises about its operation.
fn promises_nothing(e: &EngineError) -> bool {
    e.code() != "COMMIT_OUTCOME_UNKNOWN"
}

/// The history operations under test, one per seed (`seed % 7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HistoryOp {
    Restore,
    Fork,
    /// A restore, then a write on top, from a replica that never saw the history.
    RestoreThenWrite,
    /// A purging deletion, with a fork made before it whose chunks must survive.
    Purge,
    /// A deletion that keeps the history (undone by a restore).
    Delete,
    /// The target state's file imported over the database (`replace`).
    Import,
    /// The same file through an upload session: begun, one part, completed.
    Upload,
}

impl HistoryOp {
    const ALL: [HistoryOp; 7] = [
        HistoryOp::Restore,
        HistoryOp::Fork,
        HistoryOp::RestoreThenWrite,
        HistoryOp::Purge,
        HistoryOp::Delete,
        HistoryOp::Import,
        HistoryOp::Upload,
    ];

    fn of_seed(seed: u64) -> Self {
        Self::ALL[(seed % Self::ALL.len() as u64) as usize]
    }
}

fn seeded(seed: u64) -> Box<dyn FaultInjector> {
    Box::new(SeededFaults::new(seed ^ 0xF0F0, 0.06, 0.06, 0.03).with_delay(0.2))
}

fn run_seed(seed: u64) -> Result<String, String> {
    run_case(seed, seeded(seed))
}

fn pieces(file: &[u8]) -> impl futures::Stream<Item = Result<Vec<u8>, EngineError>> + Unpin {
    futures::stream::iter(file.chunks(100_000).map(|c| Ok::<_, EngineError>(c.to_vec())).collect::<Vec<_>>())
}

fn export(db: &Database) -> Result<Vec<u8>, EngineError> {
    let mut file = db.export_file()?;
    let mut out = Vec::new();
    while let Some(piece) = block_on(file.next_piece())? {
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

/// Runs seed `seed`'s operation with `faults` injected into the store while it runs, then
/// checks what a fresh replica sees against the answer.
fn run_case(seed: u64, faults: Box<dyn FaultInjector>) -> Result<String, String> {
    let store = Rc::new(MemStore::new());
    let host = Arc::new(SimHost::new(seed));
    let mut db = open(&store, &host, "h").map_err(|e| e.to_string())?;
    block_on(db.transact(&[Statement::new("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")])).map_err(|e| e.to_string())?;
    let mut states = Vec::new();
    for i in 0..10 {
        host.advance(1_000.0);
        let seq = insert(&mut db, i).map_err(|e| e.to_string())?;
        states.push((seq, i + 1));
    }
    let (target, target_rows) = states[(seed % 10) as usize];
    let before_rows = 10;

    let op = HistoryOp::of_seed(seed);
    let kept_rows = if op == HistoryOp::Purge {
        // A fork made before the deletion: its chunks must survive the purge.
        block_on(db.fork(target, "kept")).map_err(|e| e.to_string())?;
        block_on(db.checkpoint()).map_err(|e| e.to_string())?;
        target_rows
    } else {
        0
    };
    let file = if matches!(op, HistoryOp::Import | HistoryOp::Upload) {
        let past = block_on(db.past(target)).map_err(|e| e.to_string())?;
        export(&past).map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };

    store.set_faults(Some(faults));
    let outcome = match op {
        HistoryOp::Restore => block_on(db.restore(target)).map(|r| r.bookmark.0),
        HistoryOp::Fork => block_on(db.fork(target, "child")).map(|f| f.bookmark.0),
        HistoryOp::Purge => block_on(db.delete(DeleteMode::Purge)).map(|d| d.bookmark.0),
        HistoryOp::Delete => block_on(db.delete(DeleteMode::KeepHistory)).map(|d| d.bookmark.0),
        HistoryOp::Import => block_on(db.import_file(pieces(&file), true)).map(|i| i.bookmark.0),
        HistoryOp::Upload => block_on(async {
            let session = db.begin_upload(Some(256 * 1024), true).await?;
            db.upload_part(&session.id, 0, pieces(&file)).await?;
            db.complete_upload(&session.id, 1).await
        })
        .map(|i| i.bookmark.0),
        HistoryOp::RestoreThenWrite => {
            let mut other = match open(&store, &host, "h") {
                Ok(o) => o,
                Err(e) => return Ok(format!("open failed under faults: {}", e.code())),
            };
            let restored = block_on(other.restore(target));
            if restored.is_ok() {
                let _ = insert(&mut other, 100);
            }
            restored.map(|r| r.bookmark.0)
        }
    };
    store.set_faults(None);
    if store.crashed() {
        store.restart();
    }

    // The truth, from a fresh replica without faults.
    let mut fresh = open(&store, &host, "h").map_err(|e| format!("recovery failed: {e}"))?;
    if op == HistoryOp::Purge {
        return check_deletion(&store, &host, &mut fresh, &outcome, before_rows, kept_rows);
    }
    // Every commit before the operation is still in the window, whatever GC did meanwhile.
    check_window(&mut fresh, &states)?;
    if op == HistoryOp::Delete {
        return check_restorable_deletion(&mut fresh, &outcome, before_rows);
    }
    let rows = count(&mut fresh).map_err(|e| format!("reading after recovery: {e}"))?;
    match (op, &outcome) {
        (HistoryOp::Fork, Ok(_)) => {
            let mut child = open(&store, &host, "child").map_err(|e| format!("the fork does not open: {e}"))?;
            let child_rows = count(&mut child).map_err(|e| format!("the acknowledged fork does not read: {e}"))?;
            if child_rows != target_rows {
                return Err(format!("the fork has {child_rows} rows, the state it was made from {target_rows}"));
            }
            if rows != before_rows {
                return Err(format!("forking changed the parent: {rows} rows"));
            }
        }
        (HistoryOp::Fork, Err(e)) => {
            let child = open(&store, &host, "child").map_err(|e| format!("the child does not open: {e}"))?;
            if promises_nothing(e) && child.applied_seq() != 0 {
                return Err(format!("fork answered {} but the child exists", e.code()));
            }
        }
        (_, Ok(bookmark)) => {
            // The restore's commit holds the target state; later commits only add.
            let mut at = block_on(fresh.past(*bookmark)).map_err(|e| format!("the restore's commit does not read: {e}"))?;
            let restored_rows = count(&mut at).map_err(|e| e.to_string())?;
            if restored_rows != target_rows {
                return Err(format!("the acknowledged restore holds {restored_rows} rows, the target {target_rows}"));
            }
            if rows < target_rows || rows > target_rows + 1 {
                return Err(format!("after the restore {rows} rows, expected {target_rows} (+1 write)"));
            }
        }
        (_, Err(e)) => {
            if promises_nothing(e) && rows != before_rows {
                return Err(format!("restore answered {} (nothing committed) but the database has {rows} rows", e.code()));
            }
            if rows != before_rows && rows != target_rows && rows != target_rows + 1 {
                return Err(format!("after an unknown restore {rows} rows: neither before ({before_rows}) nor the target ({target_rows})"));
            }
        }
    }
    // Whatever happened, the database goes on: a write and checkpoints on top.
    for i in 0..4 {
        insert(&mut fresh, 1000 + i).map_err(|e| format!("writing after recovery: {e}"))?;
    }
    let after = count(&mut fresh).map_err(|e| e.to_string())?;
    if after != rows + 4 {
        return Err(format!("{after} rows after 4 more writes on {rows}"));
    }
    Ok(match &outcome {
        Ok(_) => "ok".into(),
        Err(e) => e.code().to_string(),
    })
}

/// Every state in `states` ((commit, rows)) still reads, with its rows.
fn check_window(db: &mut Database, states: &[(u64, i64)]) -> Result<(), String> {
    for (seq, rows) in states {
        let mut past = block_on(db.past(*seq)).map_err(|e| format!("the state after {seq}, in the window, does not open: {e}"))?;
        let n = count(&mut past).map_err(|e| format!("the state after {seq}, in the window, does not read: {e}"))?;
        if n != *rows {
            return Err(format!("the state after {seq} has {n} rows, it had {rows}"));
        }
    }
    Ok(())
}

/// The rows left after a deletion under faults (`None`: the table is gone), checked against
/// its answer: acknowledged, the table is gone; refused (nothing committed), every row is
/// there; unknown, one or the other.
fn rows_after_deletion(fresh: &mut Database, outcome: &Result<u64, EngineError>, before_rows: i64) -> Result<Option<i64>, String> {
    let rows = match count(fresh) {
        Ok(n) => Some(n),
        Err(e) if e.to_string().contains("no such table") => None,
        Err(e) => return Err(format!("reading after recovery: {e}")),
    };
    match (outcome, rows) {
        (Ok(_), Some(n)) => Err(format!("the acknowledged deletion left {n} rows")),
        (Err(e), None) if promises_nothing(e) => Err(format!("delete answered {} (nothing committed) but the table is gone", e.code())),
        (_, Some(n)) if n != before_rows => Err(format!("after a failed deletion {n} rows, expected {before_rows}")),
        _ => Ok(rows),
    }
}

/// After a deletion under faults: acknowledged, the table is gone; refused (nothing
/// committed), every row is there; unknown, one or the other. Either way the fork reads all
/// it had, a deletion without faults then purges completely, and the name works again.
fn check_deletion(
    store: &Rc<MemStore>,
    host: &Arc<SimHost>,
    fresh: &mut Database,
    outcome: &Result<u64, EngineError>,
    before_rows: i64,
    kept_rows: i64,
) -> Result<String, String> {
    rows_after_deletion(fresh, outcome, before_rows)?;
    let kept = |what: &str| -> Result<(), String> {
        let mut kept = open(store, host, "kept").map_err(|e| format!("the fork does not open {what}: {e}"))?;
        match count(&mut kept) {
            Ok(n) if n == kept_rows => Ok(()),
            Ok(n) => Err(format!("the fork has {n} rows {what}, expected {kept_rows}")),
            Err(e) => Err(format!("the fork does not read {what}: {e}")),
        }
    };
    kept("after the deletion under faults")?;
    let again = block_on(fresh.delete(DeleteMode::Purge)).map_err(|e| format!("deleting again without faults: {e}"))?;
    if !again.purge.is_some_and(|p| p.complete) {
        return Err(format!("the purge without faults did not complete: {again:?}"));
    }
    kept("after the purge")?;
    let strays: Vec<String> = store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("db/h/") && !(k.starts_with("db/h/chunk/") || k.starts_with("db/h/forks/") || k.starts_with("db/h/log/")))
        .filter(|k| k.as_str() != "db/h/manifest" && !k.starts_with("db/h/checkpoint/"))
        .collect();
    if !strays.is_empty() {
        return Err(format!("left after the purge: {strays:?}"));
    }
    block_on(fresh.transact(&[Statement::new("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")]))
        .map_err(|e| format!("the name does not work again: {e}"))?;
    insert(fresh, 1).map_err(|e| format!("writing after the deletion: {e}"))?;
    Ok(match outcome {
        Ok(_) => "ok".into(),
        Err(e) => e.code().to_string(),
    })
}

/// After a deletion that keeps the history, under faults: acknowledged, the table is gone
/// and the database says it is deleted; refused, every row is there; unknown, one or the
/// other. A deleted database comes back whole by restoring the commit before the deletion.
fn check_restorable_deletion(fresh: &mut Database, outcome: &Result<u64, EngineError>, before_rows: i64) -> Result<String, String> {
    let rows = rows_after_deletion(fresh, outcome, before_rows)?;
    if rows.is_none() {
        let info = block_on(fresh.info()).map_err(|e| format!("info after the deletion: {e}"))?;
        let deletion = info.deleted.ok_or_else(|| format!("the table is gone but the database is not deleted: {info:?}"))?;
        if let Ok(bookmark) = outcome {
            if deletion.bookmark.0 != *bookmark {
                return Err(format!("the deletion was acknowledged as {bookmark}, info says {}", deletion.bookmark));
            }
        }
        block_on(fresh.restore(deletion.previous.0)).map_err(|e| format!("undoing the deletion: {e}"))?;
        let back = count(fresh).map_err(|e| format!("reading the undone deletion: {e}"))?;
        if back != before_rows {
            return Err(format!("undoing the deletion gave {back} rows, expected {before_rows}"));
        }
    }
    insert(fresh, 1).map_err(|e| format!("writing after the deletion: {e}"))?;
    if block_on(fresh.info()).map_err(|e| e.to_string())?.deleted.is_some() {
        return Err("written to, the database still says it is deleted".into());
    }
    Ok(match outcome {
        Ok(_) => "ok".into(),
        Err(e) => e.code().to_string(),
    })
}

#[test]
fn restores_and_forks_under_faults_keep_their_answers() {
    let seeds: Vec<u64> = match std::env::var("TWILL_HISTORY_SEED") {
        Ok(s) => vec![s.parse().expect("TWILL_HISTORY_SEED is a number")],
        Err(_) => {
            let n = std::env::var("TWILL_HISTORY_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300u64);
            (1..=n).collect()
        }
    };
    let mut tally = std::collections::BTreeMap::new();
    for seed in seeds {
        match run_seed(seed) {
            Ok(what) => *tally.entry(what).or_insert(0) += 1,
            Err(why) => panic!("seed {seed}: {why} (replay: TWILL_HISTORY_SEED={seed} cargo test -p twill-tests --test history_faults)"),
        }
    }
    println!("outcomes: {tally:?}");
    assert!(tally.get("ok").copied().unwrap_or(0) > 0, "some operations succeed under faults: {tally:?}");
    assert!(tally.len() > 1, "the faults did hit some operations: {tally:?}");
}

/// Every store-operation boundary of each history operation, one at a time: a crash before
/// or after, an error before or after the n-th operation of the operation under test.
#[test]
fn every_operation_boundary_of_each_history_operation() {
    let mut failures = Vec::new();
    let mut swept = 0;
    for (i, op) in HistoryOp::ALL.iter().enumerate() {
        let seed = 700 + i as u64; // `seed % 7` picks the operation
        assert_eq!(HistoryOp::of_seed(seed), *op);
        let counter = Rc::new(std::cell::Cell::new(0u64));
        let c = counter.clone();
        run_case(seed, Box::new(ScriptedFaults(move |_: OpKind, _: &str| {
            c.set(c.get() + 1);
            Fault::None
        })))
        .unwrap_or_else(|e| panic!("{op:?} fails without faults: {e}"));
        let total = counter.get();
        assert!(total > 0, "{op:?} made no store operations");
        for n in 1..=total {
            for fault in [Fault::CrashBefore, Fault::CrashAfter, Fault::ErrorBefore, Fault::ErrorAfter] {
                let mut seen = 0u64;
                let injector = ScriptedFaults(move |_: OpKind, _: &str| {
                    seen += 1;
                    if seen == n { fault } else { Fault::None }
                });
                swept += 1;
                if let Err(why) = run_case(seed, Box::new(injector)) {
                    failures.push(format!("{op:?}: {fault:?} at operation {n} of {total}: {why}"));
                }
            }
        }
    }
    println!("history boundary sweep: {swept} cases, {} failures", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
