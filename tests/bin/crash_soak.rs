//! `make soak`'s crash gate: many seeds of `twill_tests::gate`, on every core, with a
//! progress line, bounded in time, each failure printed with the command that replays it.
//!
//! Usage: `crash_soak [SEEDS] [BASE]` (default 100,000 seeds from a base that changes every
//! run); `TWILL_SOAK_MINUTES` bounds the time (default 150).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use twill_tests::gate::{run_seed, seeded_faults};

fn main() {
    let mut args = std::env::args().skip(1);
    let seeds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let base: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1);
        (t % 1_000_000) * 1_000_000 + 1
    });
    let minutes: u64 = std::env::var("TWILL_SOAK_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(150);
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) as u64;
    println!("crash soak: {seeds} seeds from {base} on {threads} threads, at most {minutes} min");
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let done = done.clone();
            let failures = failures.clone();
            std::thread::spawn(move || {
                let mut seed = base + t;
                while seed < base + seeds && Instant::now() < deadline {
                    if let Err(why) = run_seed(seed, seeded_faults) {
                        let line = format!(
                            "seed {seed}: {why}\n  replay: TWILL_CRASH_SEED={seed} cargo test -p twill-tests --test crash_gate crash_gate_random"
                        );
                        eprintln!("FAIL {line}");
                        failures.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                    }
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % 1_000 == 0 {
                        let secs = started.elapsed().as_secs_f64();
                        let failed = failures.lock().unwrap_or_else(|p| p.into_inner()).len();
                        println!("crash soak: {n}/{seeds} seeds, {failed} failures, {secs:.0} s ({:.0} seeds/s)", n as f64 / secs);
                    }
                    seed += threads;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let n = done.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "crash soak: {n} seeds run (base {base}), {} failures, {:.0} s{}",
        failures.len(),
        started.elapsed().as_secs_f64(),
        if n < seeds { " (stopped at the time bound)" } else { "" }
    );
    for f in failures.iter() {
        println!("{f}");
    }
    if !failures.is_empty() || n < seeds {
        std::process::exit(1);
    }
}
