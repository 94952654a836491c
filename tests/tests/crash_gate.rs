//! The crash gate (Exp 4): seeded random transactions from several replicas, running
//! concurrently, against the in-memory store with faults (errors before and after an
//! operation applies, added latency that reorders the replicas' operations) and engine
//! crashes at operation boundaries, frequent checkpoints and immediate GC; then recovery
//! and a check against the model of what was acknowledged:
//!
//! * every acknowledged transaction is present,
//! * no transaction is torn (all of its rows or none, and the counter agrees),
//! * nothing is applied twice or appears that was never attempted,
//! * replicas that survived agree with a fresh recovery.
//!
//! `TWILL_CRASH_SEEDS=N` runs N seeds (default 2000); `TWILL_CRASH_SEED=S` replays one.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use engine_core::mem_store::{Fault, MemStore, OpKind, ScriptedFaults, SeededFaults, SplitMix64};
use engine_core::{Database, DbConfig, EngineError, SqlValue, Statement};
use twill_tests::{block_on, try_open};

const REPLICAS: usize = 3;
const TRANSACTIONS: u64 = 24;

fn config() -> DbConfig {
    DbConfig { checkpoint_records: 3, gc_retention_ms: 0.0, max_commit_attempts: 4, ..DbConfig::default() }
}

/// Transaction `txid` inserts `rows` rows tagged with it and adds `rows` to the counter.
fn transaction(txid: u64, rows: u64) -> Vec<Statement> {
    let mut stmts: Vec<Statement> = (0..rows)
        .map(|k| {
            Statement::with_params(
                "INSERT INTO item (id, tx, pad) VALUES (?, ?, randomblob(300))",
                vec![SqlValue::Integer((txid * 10 + k) as i64), SqlValue::Integer(txid as i64)],
            )
        })
        .collect();
    stmts.push(Statement::with_params("UPDATE counter SET n = n + ? WHERE id = 1", vec![SqlValue::Integer(rows as i64)]));
    stmts
}

struct Model {
    /// txid -> rows, for every transaction ever submitted.
    attempted: BTreeMap<u64, u64>,
    acked: BTreeSet<u64>,
}

/// Runs one seed; returns a description of the first violation.
fn run_seed(seed: u64, faults: impl Fn(u64) -> Box<dyn engine_core::mem_store::FaultInjector>) -> Result<(), String> {
    let store = Rc::new(MemStore::new());
    // Set-up without faults: the schema.
    {
        let mut db = try_open(&store, "gate", config(), 1 << 20).map_err(|e| e.to_string())?;
        block_on(db.transact(&[
            Statement::new("CREATE TABLE item (id INTEGER PRIMARY KEY, tx INTEGER NOT NULL, pad BLOB)"),
            Statement::new("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"),
            Statement::new("INSERT INTO counter VALUES (1, 0)"),
        ]))
        .map_err(|e| e.to_string())?;
    }
    let mut rng = SplitMix64(seed);
    store.set_faults(Some(faults(seed)));
    let mut replicas: Vec<Option<Database>> = (0..REPLICAS).map(|_| None).collect();
    let mut model = Model { attempted: BTreeMap::new(), acked: BTreeSet::new() };
    let mut txid = 0;
    let mut failed_opens = 0;
    while txid < TRANSACTIONS {
        // This round's replicas run their transactions concurrently; delayed operations
        // make their store calls interleave.
        let mut order: Vec<usize> = (0..REPLICAS).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        order.truncate(1 + rng.below(REPLICAS as u64) as usize);
        let mut round: Vec<(usize, u64, Vec<Statement>)> = Vec::new();
        for &r in &order {
            if replicas[r].is_none() {
                // (Re)start this replica with a small cache (lazy reads, evictions);
                // opening can fail or crash too.
                match try_open(&store, "gate", config(), 64 << 10) {
                    Ok(db) => {
                        replicas[r] = Some(db);
                        failed_opens = 0;
                    }
                    Err(e) => {
                        if store.crashed() {
                            store.restart();
                        }
                        // Injected faults make some opens fail; a durable state that
                        // cannot be opened at all fails the gate.
                        failed_opens += 1;
                        if failed_opens > 30 {
                            return Err(format!("the database cannot be opened: {e}"));
                        }
                        continue;
                    }
                }
            }
            if txid < TRANSACTIONS {
                txid += 1;
                let rows = 1 + rng.below(3);
                model.attempted.insert(txid, rows);
                round.push((r, txid, transaction(txid, rows)));
            }
        }
        let runs = replicas.iter_mut().enumerate().filter_map(|(r, db)| {
            let (_, id, stmts) = round.iter().find(|t| t.0 == r)?;
            let db = db.as_mut()?;
            Some(async move { (*id, db.transact(stmts).await) })
        });
        for (id, result) in block_on(futures::future::join_all(runs)) {
            match result {
                Ok(_) => {
                    model.acked.insert(id);
                }
                Err(e @ (EngineError::Internal(_) | EngineError::Corrupt(_))) if !store.crashed() => {
                    return Err(format!("tx {id}: unexpected {e}"));
                }
                Err(_) => {}
            }
        }
        if store.crashed() {
            // The process hosting this round's replicas died: their memory is gone, R2
            // keeps what it has.
            for (r, _, _) in &round {
                replicas[*r] = None;
            }
            store.restart();
        }
        // Occasionally a replica is simply dropped (isolate evicted).
        if rng.below(10) == 0 {
            replicas[rng.below(REPLICAS as u64) as usize] = None;
        }
    }

    // Recovery, with the faults gone.
    store.set_faults(None);
    store.restart();
    let mut fresh = try_open(&store, "gate", config(), 64 << 10).map_err(|e| format!("recovery failed: {e}"))?;
    let state = read_state(&mut fresh)?;
    check(&model, &state)?;
    for (i, replica) in replicas.iter_mut().enumerate() {
        if let Some(db) = replica {
            let seen = read_state(db).map_err(|e| format!("replica {i}: {e}"))?;
            if seen != state {
                return Err(format!("replica {i} disagrees with recovery"));
            }
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq)]
struct State {
    rows_by_tx: BTreeMap<u64, u64>,
    counter: i64,
}

fn read_state(db: &mut Database) -> Result<State, String> {
    let r = block_on(db.transact(&[
        Statement::new("SELECT tx, count(*) FROM item GROUP BY tx ORDER BY tx"),
        Statement::new("SELECT n FROM counter WHERE id = 1"),
    ]))
    .map_err(|e| e.to_string())?;
    let int = |v: &SqlValue| match v {
        SqlValue::Integer(i) => *i,
        other => panic!("not an integer: {other:?}"),
    };
    let rows_by_tx = r.results[0].rows.iter().map(|row| (int(&row[0]) as u64, int(&row[1]) as u64)).collect();
    Ok(State { rows_by_tx, counter: int(&r.results[1].rows[0][0]) })
}

fn check(model: &Model, state: &State) -> Result<(), String> {
    for tx in &model.acked {
        if !state.rows_by_tx.contains_key(tx) {
            return Err(format!("acknowledged transaction {tx} is lost"));
        }
    }
    let mut total = 0;
    for (tx, rows) in &state.rows_by_tx {
        match model.attempted.get(tx) {
            None => return Err(format!("transaction {tx} was never attempted")),
            Some(expected) if expected != rows => {
                return Err(format!("transaction {tx} is torn: {rows} of {expected} rows"))
            }
            _ => total += rows,
        }
    }
    if state.counter != total as i64 {
        return Err(format!("counter {} disagrees with {} rows: a transaction was half applied", state.counter, total));
    }
    Ok(())
}

fn seeded(seed: u64) -> Box<dyn engine_core::mem_store::FaultInjector> {
    Box::new(SeededFaults::new(seed ^ 0x5EED, 0.04, 0.04, 0.02).with_delay(0.2))
}

#[test]
fn crash_gate_random_faults_and_crashes() {
    let seeds: Vec<u64> = match std::env::var("TWILL_CRASH_SEED") {
        Ok(s) => vec![s.parse().expect("TWILL_CRASH_SEED is a number")],
        Err(_) => {
            let n = std::env::var("TWILL_CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000u64);
            (1..=n).collect()
        }
    };
    let mut failures = Vec::new();
    for &seed in &seeds {
        if let Err(why) = run_seed(seed, seeded) {
            failures.push(format!("seed {seed}: {why}  (replay: TWILL_CRASH_SEED={seed} cargo test -p twill-tests --test crash_gate)"));
        }
    }
    println!("crash gate: {} seeds, {} failures", seeds.len(), failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every operation boundary of a fixed workload, one at a time: crash before, crash after,
/// error before and error after the n-th store operation.
#[test]
fn crash_gate_every_operation_boundary() {
    // Count the operations of a fault-free run of the workload.
    let total_ops = {
        let counter = Rc::new(std::cell::Cell::new(0u64));
        let c = counter.clone();
        run_seed(7, move |_| {
            let c = c.clone();
            Box::new(ScriptedFaults(move |_: OpKind, _: &str| {
                c.set(c.get() + 1);
                Fault::None
            }))
        })
        .unwrap();
        counter.get()
    };
    assert!(total_ops > 50, "workload too small: {total_ops} operations");
    let mut failures = Vec::new();
    for n in 1..=total_ops {
        for fault in [Fault::CrashBefore, Fault::CrashAfter, Fault::ErrorBefore, Fault::ErrorAfter] {
            let result = run_seed(7, move |_| {
                let mut seen = 0u64;
                Box::new(ScriptedFaults(move |_: OpKind, _: &str| {
                    seen += 1;
                    if seen == n { fault } else { Fault::None }
                }))
            });
            if let Err(why) = result {
                failures.push(format!("{fault:?} at operation {n}: {why}"));
            }
        }
    }
    println!("crash gate sweep: {total_ops} operation boundaries x 4 faults, {} failures", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
