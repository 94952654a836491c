//! The crash gate (Exp 4): see `tests/gate.rs` for the workload and the oracle.
//!
//! `make test` runs 2,000 seeds from a base that changes every run (printed, so a failure
//! can be replayed), the seeds that once failed, and every operation boundary of a fixed
//! workload. `TWILL_CRASH_SEEDS=N` runs N seeds, `TWILL_CRASH_BASE=B` starts them at B,
//! `TWILL_CRASH_SEED=S` replays one (`TWILL_TRACE=1` prints its operations and answers,
//! `TWILL_TRACE_STORE=1` every store call); `make soak` runs 100,000 (bin/crash_soak.rs).

use engine_core::mem_store::{Fault, OpKind, ScriptedFaults};
use twill_tests::gate::{run_seed, seeded_faults};

/// Seeds that failed once, kept as regression tests.
const REGRESSIONS: &[(u64, &str)] = &[
    (17816, "a replica answered from a zombie's record mixed with the real ones after it"),
    (304285056490, "a quiet checkpoint on a stale manifest found a history entry a newer checkpoint had collected"),
    (424598001017, "a staleness-bounded read answered from a reload that went back past the state it had proven current"),
    (439748002926, "a replica that applied a schema change whose schema pages were not cached was left with no schema"),
    (440159919, "applying a record that rewrites page 1 read the header from a base page the cache had evicted"),
    (440176085, "a quiet checkpoint's rebase applied a record that rewrites page 1 with the header evicted"),
    (1329, "a write's answer named the deletion its fence check caught up on as its bookmark, not its own commit"),
];

fn replay_hint(seed: u64) -> String {
    format!("replay: TWILL_CRASH_SEED={seed} cargo test -p twill-tests --test crash_gate")
}

#[test]
fn crash_gate_random_faults_and_crashes() {
    let seeds: Vec<u64> = match std::env::var("TWILL_CRASH_SEED") {
        Ok(s) => vec![s.parse().expect("TWILL_CRASH_SEED is a number")],
        Err(_) => {
            let n = std::env::var("TWILL_CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000u64);
            let base = std::env::var("TWILL_CRASH_BASE").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1);
                (t % 1_000_000) * 1_000 + 1
            });
            println!("crash gate: seeds {base}..{} (TWILL_CRASH_BASE={base})", base + n);
            eprintln!("crash gate: seeds {base}..{} (TWILL_CRASH_BASE={base})", base + n);
            (base..base + n).chain(REGRESSIONS.iter().map(|(s, _)| *s)).collect()
        }
    };
    let mut failures = Vec::new();
    for &seed in &seeds {
        if let Err(why) = run_seed(seed, seeded_faults) {
            failures.push(format!("seed {seed}: {why}  ({})", replay_hint(seed)));
        }
    }
    println!("crash gate: {} seeds, {} failures", seeds.len(), failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn crash_gate_regressions() {
    for (seed, what) in REGRESSIONS {
        if let Err(why) = run_seed(*seed, seeded_faults) {
            panic!("regression seed {seed} ({what}) fails again: {why}  ({})", replay_hint(*seed));
        }
    }
}

/// Every operation boundary of a fixed workload, one at a time: crash before, crash after,
/// error before and error after the n-th store operation.
#[test]
fn crash_gate_every_operation_boundary() {
    // Count the operations of a fault-free run of the workload.
    let total_ops = {
        let counter = std::rc::Rc::new(std::cell::Cell::new(0u64));
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
