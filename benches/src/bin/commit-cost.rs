//! Commit cost with simulated object-store latency (Exp 1, Exp 2) and contention (Exp 3),
//! natively, through the same engine the Worker runs.
//!
//! Each "isolate" is one `Database` with a committer task that does what the Worker's
//! registry does: whoever holds the database runs every request waiting at that moment
//! (up to 64) as one group, one log record for all. Writers are tasks on one thread that
//! each commit a row and wait for the acknowledgement before the next.
//!
//! Writes a markdown section to stdout and target figures to `$TWILL_BENCH_TARGETS`;
//! `TWILL_BENCH_ONLY=contention` runs Exp 3 alone.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use engine_core::mem_store::MemStore;
use engine_core::store::CountingStore;
use engine_core::{Database, DbConfig, DbContext, EngineError, Layout, ObjectStore, ReadFrom, Request, SqlValue, Statement, Work};
use tokio::sync::{oneshot, Notify};
use twill_benches::{write_chart_point, scale, write_target, Latency, Percentiles, SimStore};

/// Requests committed together at most (as in the Worker).
const MAX_GROUP: usize = 64;

const LATENCY: Latency = Latency { write: Duration::from_millis(20), read: Duration::from_millis(10), jitter: 0.25 };

type Store = CountingStore<SimStore<MemStore>>;

struct Pending {
    work: Work,
    reply: oneshot::Sender<Result<(), EngineError>>,
}

/// One isolate's handle on one database: a queue and the committer that drains it.
struct Lane {
    queue: RefCell<Vec<Pending>>,
    wake: Notify,
    stop: Cell<bool>,
}

impl Lane {
    /// Opens the database on `store` and starts its committer on the current `LocalSet`.
    async fn start(store: Rc<Store>, name: &str) -> Rc<Lane> {
        let lane = Rc::new(Lane { queue: RefCell::new(Vec::new()), wake: Notify::new(), stop: Cell::new(false) });
        let s: Rc<dyn ObjectStore> = store;
        // Backoff between commit attempts really waits, as the Worker's timer does.
        let ctx = DbContext::new(s).with_sleeper(Rc::new(TokioSleep));
        let mut db = Database::open(ctx, Layout::new("", name), DbConfig::default()).await.expect("open");
        let l = lane.clone();
        tokio::task::spawn_local(async move {
            while !l.stop.get() {
                let group: Vec<Pending> = {
                    let mut q = l.queue.borrow_mut();
                    let n = q.len().min(MAX_GROUP);
                    q.drain(..n).collect()
                };
                if group.is_empty() {
                    l.wake.notified().await;
                    continue;
                }
                let (requests, replies): (Vec<_>, Vec<_>) =
                    group.into_iter().map(|p| (Request { work: p.work, read_from: ReadFrom::Latest }, p.reply)).unzip();
                for (result, reply) in db.perform(requests).await.into_iter().zip(replies) {
                    let _ = reply.send(result.map(|_| ()));
                }
            }
        });
        lane
    }

    async fn commit(&self, statement: Statement) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.queue.borrow_mut().push(Pending { work: Work::Transaction(vec![statement]), reply: tx });
        self.wake.notify_one();
        rx.await.expect("committer alive")
    }

    fn shut(&self) {
        self.stop.set(true);
        self.wake.notify_one();
    }
}

struct TokioSleep;

#[async_trait::async_trait(?Send)]
impl engine_core::host::Sleeper for TokioSleep {
    async fn sleep(&self, ms: f64) {
        tokio::time::sleep(Duration::from_secs_f64(ms.max(0.0) / 1000.0)).await;
    }
}

fn new_store(seed: u64) -> Rc<Store> {
    store_over(Rc::new(MemStore::new()), seed)
}

/// The simulated R2 over `mem`, whose own counters tell PUTs and LISTs apart.
fn store_over(mem: Rc<MemStore>, seed: u64) -> Rc<Store> {
    Rc::new(CountingStore::new(Rc::new(SimStore::new(mem, LATENCY, seed))))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime")
}

fn insert(writer: usize, i: u64) -> Statement {
    Statement::with_params("INSERT INTO t (w, i) VALUES (?, ?)", vec![SqlValue::Integer(writer as i64), SqlValue::Integer(i as i64)])
}

/// Exp 1: sequential commits by one writer.
async fn sequential(commits: usize) -> (Percentiles, f64, f64) {
    let store = new_store(1);
    let lane = Lane::start(store.clone(), "seq").await;
    lane.commit(Statement::new("CREATE TABLE t (w INTEGER, i INTEGER)")).await.unwrap();
    let before = store.counts();
    let mut samples = Vec::with_capacity(commits);
    let started = Instant::now();
    for i in 0..commits {
        let t = Instant::now();
        lane.commit(insert(0, i as u64)).await.unwrap();
        samples.push(t.elapsed());
    }
    let rate = commits as f64 / started.elapsed().as_secs_f64();
    let c = store.counts().since(&before);
    lane.shut();
    (Percentiles::of(&samples), rate, c.writes as f64 / commits as f64)
}

/// Exp 2: `writers` concurrent writers in one isolate for `run_for`.
async fn concurrent(writers: usize, run_for: Duration, max_per_writer: u64) -> (f64, f64, f64, Percentiles) {
    let store = new_store(2);
    let lane = Lane::start(store.clone(), "conc").await;
    lane.commit(Statement::new("CREATE TABLE t (w INTEGER, i INTEGER)")).await.unwrap();
    let before = store.counts();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let lane = lane.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut samples = Vec::new();
            let mut i = 0;
            while started.elapsed() < run_for && i < max_per_writer {
                let t = Instant::now();
                lane.commit(insert(w, i)).await.unwrap();
                samples.push(t.elapsed());
                i += 1;
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let c = store.counts().since(&before);
    let commits = samples.len() as f64;
    // Every acknowledged row is there, read back through a fresh replica.
    let check = Lane::start(store.clone(), "conc").await;
    let (tx, rx) = oneshot::channel();
    check.queue.borrow_mut().push(Pending { work: Work::Transaction(vec![Statement::new("SELECT count(*) FROM t")]), reply: tx });
    check.wake.notify_one();
    rx.await.unwrap().unwrap();
    lane.shut();
    check.shut();
    (commits / elapsed, c.writes as f64 / commits, c.reads as f64 / commits, Percentiles::of(&samples))
}

/// What one contention run measured.
struct Contended {
    /// Acknowledged commits per second (goodput).
    goodput: f64,
    /// Requests answered `WRITE_CONFLICT` per second, and their share of all requests.
    conflicts: f64,
    conflict_share: f64,
    /// Latency of acknowledged commits, retries and backoff included.
    latency: Percentiles,
    /// R2 class A operations (PUTs, refused ones included, and LISTs) per acknowledged
    /// commit: what contention costs in money.
    class_a_per_commit: f64,
}

/// Exp 3: `writers` writers, each in its own isolate, all incrementing the same row of one
/// database (`shared`), or each its own database.
async fn contention(writers: usize, shared: bool, run_for: Duration, max_per_writer: u64) -> Contended {
    let mem = Rc::new(MemStore::new());
    let store = store_over(mem.clone(), 3 + writers as u64);
    let name = |w: usize| if shared { "shared".to_string() } else { format!("own-{w}") };
    for w in 0..if shared { 1 } else { writers } {
        let lane = Lane::start(store.clone(), &name(w)).await;
        lane.commit(Statement::new("CREATE TABLE c (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")).await.unwrap();
        lane.commit(Statement::new("INSERT INTO c VALUES (1, 0)")).await.unwrap();
        lane.shut();
    }
    let mut lanes = Vec::new();
    for w in 0..writers {
        lanes.push(Lane::start(store.clone(), &name(w)).await);
    }
    let (started, counts_before) = (Instant::now(), mem.counts());
    let mut tasks = Vec::new();
    for lane in lanes {
        tasks.push(tokio::task::spawn_local(async move {
            let (mut samples, mut conflicts, mut i) = (Vec::new(), 0u64, 0u64);
            while started.elapsed() < run_for && i < max_per_writer {
                let t = Instant::now();
                match lane.commit(Statement::new("UPDATE c SET n = n + 1 WHERE id = 1")).await {
                    Ok(()) => samples.push(t.elapsed()),
                    Err(EngineError::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("unexpected error {e}"),
                }
                i += 1;
            }
            lane.shut();
            (samples, conflicts)
        }));
    }
    let (mut samples, mut conflicts) = (Vec::new(), 0);
    let mut per_db = Vec::new();
    for t in tasks {
        let (s, c) = t.await.unwrap();
        per_db.push(s.len() as u64);
        samples.extend(s);
        conflicts += c;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = samples.len() as u64;
    let counts = mem.counts();
    let class_a = (counts.puts - counts_before.puts) + (counts.lists - counts_before.lists);
    // Correctness: every acknowledged increment is in the counter, none twice.
    let expected: Vec<u64> = if shared { vec![ok] } else { per_db };
    for (w, want) in expected.iter().enumerate() {
        let s: Rc<dyn ObjectStore> = store.clone();
        let mut db = Database::open(DbContext::new(s), Layout::new("", &name(w)), DbConfig::default()).await.unwrap();
        let r = db.transact(&[Statement::new("SELECT n FROM c WHERE id = 1")]).await.unwrap();
        assert_eq!(r.results[0].rows, vec![vec![SqlValue::Integer(*want as i64)]], "acknowledged increments all present");
    }
    Contended {
        goodput: ok as f64 / elapsed,
        conflicts: conflicts as f64 / elapsed,
        conflict_share: conflicts as f64 / (ok + conflicts).max(1) as f64,
        latency: Percentiles::of(&samples),
        class_a_per_commit: class_a as f64 / ok.max(1) as f64,
    }
}

fn main() {
    let rt = runtime();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        println!(
            "Simulated object-store latency: PUT/DELETE {} ms, GET/HEAD/LIST {} ms, each ±{:.0}% (uniform). One thread; \
             each writer commits a one-row INSERT and waits for its acknowledgement.",
            LATENCY.write.as_millis(),
            LATENCY.read.as_millis(),
            LATENCY.jitter * 100.0
        );
        println!();
        let only_contention = std::env::var("TWILL_BENCH_ONLY").is_ok_and(|v| v == "contention");
        let run_for = Duration::from_millis(scale(3000, 300));
        let cap = scale(100_000, 50);
        if !only_contention {
            let commits = scale(1000, 20);
            let (p, seq_rate, writes_per_commit) = sequential(commits).await;
            println!("**Exp 1, sequential commits** ({} commits; a commit is 1 PUT of its log record + 1 HEAD of the manifest, and a checkpoint every 32):", p.count);
            println!();
            println!("| p50 ms | p99 ms | p999 ms | mean ms | commits/s | store writes per commit |");
            println!("|---|---|---|---|---|---|");
            println!("| {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |", p.p50, p.p99, p.p999, p.mean, seq_rate, writes_per_commit);
            println!();

            println!("**Exp 2, group commit**: commits/s against concurrent writers in one isolate ({} s per point).", run_for.as_secs_f64());
            println!();
            println!("| writers | commits/s | × sequential | store writes per commit | store reads per commit | commit p50 ms | p99 ms |");
            println!("|---|---|---|---|---|---|---|");
            let mut at64 = 0.0;
            for writers in [1, 4, 16, 64] {
                let (rate, w, r, p) = concurrent(writers, run_for, cap).await;
                println!("| {writers} | {rate:.0} | {:.1} | {w:.3} | {r:.3} | {:.1} | {:.1} |", rate / seq_rate, p.p50, p.p99);
                let x = writers as f64;
                write_chart_point("group-commit-rate", "commits/s", x, rate);
                write_chart_point("group-commit-writes", "R2 writes per commit", x, w);
                write_chart_point("commit-latency", "p50", x, p.p50);
                write_chart_point("commit-latency", "p99", x, p.p99);
                write_chart_point("commit-latency", "p999", x, p.p999);
                if writers == 64 {
                    at64 = rate;
                }
            }
            println!();
            let ratio = at64 / seq_rate;
            write_target("with 20 ms simulated PUT latency, commits/s at 64 writers ≥ 20× sequential", format!("{ratio:.1}×"), ratio >= 20.0);
        }
        println!("**Exp 3, contention**: N writers, each in its own isolate (its own `Database` and cache), incrementing one row \
                  of one shared database, against N writers each on its own database ({} s per point). A lost commit race is \
                  retried after a jittered backoff (uniform in 0..min(128 ms, 4 ms × 2^attempt)) within a 5 s budget; only then \
                  is the request answered `WRITE_CONFLICT`. Latency is of acknowledged commits, retries included. The counters \
                  are checked afterwards: every acknowledged increment is present exactly once. Class A per commit counts the \
                  R2 PUTs (a refused conditional PUT is billed as one too) and LISTs per acknowledged commit, checkpoints included.", run_for.as_secs_f64());
        println!();
        println!("| writers | same row, one database: goodput commits/s | conflicts/s | conflict share | p50 ms | p99 ms | class A per commit | own database each: goodput | p50 ms | p99 ms | class A per commit | separate ÷ shared |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        for writers in [1, 4, 16] {
            let shared = contention(writers, true, run_for, cap).await;
            let own = contention(writers, false, run_for, cap).await;
            println!(
                "| {writers} | {:.1} | {:.1} | {:.1}% | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} |",
                shared.goodput,
                shared.conflicts,
                shared.conflict_share * 100.0,
                shared.latency.p50,
                shared.latency.p99,
                shared.class_a_per_commit,
                own.goodput,
                own.latency.p50,
                own.latency.p99,
                own.class_a_per_commit,
                own.goodput / shared.goodput.max(f64::MIN_POSITIVE)
            );
            if writers == 16 {
                write_target(
                    "16 writers on one hot row: conflicts ≤ 5% of requests (retries within the commit budget)",
                    format!("{:.1}% conflicts, goodput {:.1} commits/s, p99 {:.0} ms", shared.conflict_share * 100.0, shared.goodput, shared.latency.p99),
                    shared.conflict_share <= 0.05,
                );
            }
        }
        println!();
    });
}
