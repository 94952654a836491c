//! The storage engine on the object store: checkpoints and GC, lazy reads through a
//! bounded cache, the zombie writer, ambiguous PUTs, group commit.

use std::rc::Rc;

use engine_core::mem_store::{Fault, MemStore, OpKind, ScriptedFaults};
use std::sync::Arc;

use engine_core::dst::SimHost;
use engine_core::{store, Database, DbConfig, DbContext, Layout, ObjectStore, SqlValue, Statement};
use twill_tests::{block_on, exec, open, open_with, query_ints, try_open, try_open_in};

fn small_checkpoints() -> DbConfig {
    DbConfig { checkpoint_records: 4, checkpoint_min_interval_ms: 0.0, gc_retention_ms: 0.0, history_retention_ms: 0.0, ..DbConfig::default() }
}

/// Holds back the first store call `picks` chooses (for 200 yields of the executor), so that
/// other work runs while it is in flight. The flag says whether it was held.
fn hold_back_once(store: &MemStore, picks: impl Fn(OpKind, &str) -> bool + 'static) -> Rc<std::cell::Cell<bool>> {
    let held = Rc::new(std::cell::Cell::new(false));
    let seen = held.clone();
    store.set_faults(Some(Box::new(ScriptedFaults(move |op, key: &str| {
        if picks(op, key) && !seen.get() {
            seen.set(true);
            return Fault::Delay(200);
        }
        Fault::None
    }))));
    held
}

/// Picks the manifest's HEAD (a probe's, or a commit's fence check).
fn manifest_head(op: OpKind, key: &str) -> bool {
    op == OpKind::Head && key.ends_with("/manifest")
}

fn log_keys(store: &MemStore, db: &str) -> Vec<String> {
    store.keys().into_iter().filter(|k| k.starts_with(&format!("db/{db}/log/"))).collect()
}

#[test]
fn checkpoints_fold_the_log_gc_deletes_it_and_restarts_read_the_new_manifest() {
    let store = Rc::new(MemStore::new());
    let mut db = open_with(&store, "c", small_checkpoints(), 32 << 20);
    exec(&mut db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", vec![]);
    for i in 0..30 {
        exec(&mut db, "INSERT INTO t (v) VALUES (?)", vec![SqlValue::Text(format!("v{i}"))]);
    }
    assert!(db.checkpoint_seq() >= 28, "checkpoint at {}", db.checkpoint_seq());
    assert!(store.raw_get("db/c/manifest").is_some());
    let logs = log_keys(&store, "c");
    assert!(logs.len() <= 12, "GC keeps the log short: {logs:?}");
    let chunks = store.keys().into_iter().filter(|k| k.contains("/chunk/")).count();
    assert!(chunks >= 1);

    let mut fresh = open_with(&store, "c", small_checkpoints(), 32 << 20);
    assert_eq!(fresh.applied_seq(), 31);
    assert_eq!(query_ints(&mut fresh, "SELECT count(*) FROM t"), [30]);
    exec(&mut fresh, "UPDATE t SET v = 'x' WHERE id = 3", vec![]);
    // the first replica sees the other's write, across checkpoints
    assert_eq!(exec(&mut db, "SELECT v FROM t WHERE id = 3", vec![]).rows, vec![vec![SqlValue::Text("x".into())]]);
}

/// A statement that misses a page waits for it and goes on: a full scan of a database far
/// larger than the cache fetches each page group about once, never starts over, and holds
/// no pages outside the cache budget (it used to re-run from the start once per missing
/// group, pinning every page it had read: quadratic time, memory the size of the scan).
#[test]
fn a_full_scan_streams_through_a_small_cache_in_one_pass() {
    let store = Rc::new(MemStore::new());
    let budget = 256 << 10;
    let config = DbConfig { checkpoint_records: 8, ..DbConfig::default() };
    let mut db = open_with(&store, "scan", config, 64 << 20);
    exec(&mut db, "CREATE TABLE big (id INTEGER PRIMARY KEY, pad BLOB)", vec![]);
    for batch in 0..40 {
        let stmts: Vec<Statement> = (0..100)
            .map(|i| Statement::with_params("INSERT INTO big VALUES (?, randomblob(900))", vec![SqlValue::Integer(batch * 100 + i)]))
            .collect();
        block_on(db.transact(&stmts)).unwrap();
    }
    block_on(db.checkpoint()).unwrap();
    let pages = query_ints(&mut db, "PRAGMA page_count")[0] as u64;
    assert!(pages * 4096 >= 12 * budget as u64, "database of {pages} pages must be >= 12x the {budget}-byte cache");

    let mut cold = open_with(&store, "scan", config, budget);
    let before = store.counts();
    let r = block_on(cold.transact(&[Statement::new("SELECT count(*), sum(length(pad)) FROM big")])).unwrap();
    assert_eq!(r.results[0].rows, vec![vec![SqlValue::Integer(4000), SqlValue::Integer(4000 * 900)]]);
    assert_eq!(r.stats.page_restarts, 0, "the scan waited for its pages instead of starting over");
    let gets = store.counts().gets - before.gets;
    let chunks = pages.div_ceil(64);
    eprintln!("scan of {pages} pages ({chunks} chunks): {gets} GETs");
    assert!(gets <= chunks * 3 / 2 + 4, "{gets} GETs for {chunks} chunks: a scan reads whole chunks, each about once");
    let stats = cold.cache().stats();
    assert!(stats.bytes <= budget, "cache over budget: {stats:?}");

    // Writes that read cold pages wait for them too, and what they did is durable.
    let r = block_on(cold.transact(&[Statement::new("UPDATE big SET pad = zeroblob(10) WHERE id % 3 = 0")])).unwrap();
    assert_eq!(r.results[0].rows_affected, 1334);
    let mut again = open_with(&store, "scan", config, budget);
    assert_eq!(query_ints(&mut again, "SELECT count(*) FROM big WHERE length(pad) = 10"), [1334]);
}

#[test]
fn a_database_four_times_the_cache_works_and_the_cache_stays_in_budget() {
    let store = Rc::new(MemStore::new());
    let budget = 256 << 10;
    let config = DbConfig { checkpoint_records: 8, ..DbConfig::default() };
    let mut db = open_with(&store, "big", config, budget);
    exec(&mut db, "CREATE TABLE big (id INTEGER PRIMARY KEY, pad BLOB)", vec![]);
    for batch in 0..64 {
        let stmts: Vec<Statement> = (0..20)
            .map(|i| Statement::with_params("INSERT INTO big VALUES (?, randomblob(900))", vec![SqlValue::Integer(batch * 20 + i)]))
            .collect();
        block_on(db.transact(&stmts)).unwrap();
    }
    block_on(db.checkpoint()).unwrap();
    let total = (query_ints(&mut db, "PRAGMA page_count")[0] * 4096) as u64;
    assert!(total >= 4 * budget as u64, "database {total} bytes must be >= 4x the {budget}-byte cache");

    let before = store.counts();
    let mut cold = open_with(&store, "big", config, budget);
    assert_eq!(query_ints(&mut cold, "SELECT id FROM big WHERE id = 200"), [200]);
    let reads = store.counts().gets - before.gets + store.counts().heads - before.heads + store.counts().lists - before.lists;
    let stats = cold.cache().stats();
    assert!(stats.bytes < total as usize / 2, "a point query must not download the database: {stats:?}");
    assert!(reads <= 12, "cold point query took {reads} reads");
    assert_eq!(query_ints(&mut cold, "SELECT count(*) FROM big"), [1280]);
    assert_eq!(query_ints(&mut cold, "SELECT sum(length(pad)) FROM big"), [1280 * 900]);
    let stats = cold.cache().stats();
    assert!(stats.bytes <= budget, "cache over budget: {stats:?}");
    assert!(stats.evictions > 0);
    // and it keeps working for writes that touch cold pages
    exec(&mut cold, "DELETE FROM big WHERE id % 2 = 0", vec![]);
    assert_eq!(query_ints(&mut cold, "SELECT count(*) FROM big"), [640]);
    let mut again = open_with(&store, "big", config, budget);
    assert_eq!(query_ints(&mut again, "SELECT count(*) FROM big WHERE id % 2 = 1"), [640]);
}

#[test]
fn zombie_writer_stalled_across_checkpoint_and_gc_is_never_acknowledged() {
    let store = Rc::new(MemStore::new());
    // Simulated time, so the retention window can pass while the zombie stalls.
    let host = Arc::new(SimHost::new(1));
    let cfg = DbConfig { checkpoint_records: 4, gc_retention_ms: 1_000.0, history_retention_ms: 0.0, ..DbConfig::default() };
    let open_sim = || {
        let ctx = DbContext::new(store.clone()).with_host(host.clone()).with_sleeper(engine_core::dst::sleeper(&host));
        try_open_in(ctx, "z", cfg).expect("open")
    };
    let mut zombie = open_sim();
    exec(&mut zombie, "CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)", vec![]);
    let zombie_seq = zombie.applied_seq();
    let mut other = open_sim();
    for _ in 0..12 {
        host.advance(700.0);
        exec(&mut other, "INSERT INTO t (who) VALUES ('other')", vec![]);
    }
    // GC deleted the record right after the zombie's position: a create-only PUT there succeeds.
    assert!(store.raw_get(&format!("db/z/log/{:020}", zombie_seq + 1)).is_none());
    let puts_before = store.counts().puts;
    let r = exec(&mut zombie, "INSERT INTO t (who) VALUES ('zombie')", vec![]);
    assert_eq!(r.rows_affected, 1);
    assert!(store.counts().puts > puts_before);
    // Its first attempt was fenced (record deleted again), the retry committed on top.
    assert!(store.raw_get(&format!("db/z/log/{:020}", zombie_seq + 1)).is_none(), "garbage record removed");
    let mut check = open_sim();
    assert_eq!(query_ints(&mut check, "SELECT count(*) FROM t WHERE who = 'zombie'"), [1]);
    assert_eq!(query_ints(&mut check, "SELECT count(*) FROM t"), [13]);
}

/// A writer whose record another isolate reads and folds into a checkpoint before the
/// writer's own fence check must not take it for a zombie's: its commit is acknowledged,
/// once, and never run again (crash-gate seed 148 of the stronger oracle).
#[test]
fn a_record_folded_before_its_fence_check_is_acknowledged_once() {
    let cfg = DbConfig { checkpoint_records: 2, gc_retention_ms: 60_000.0, history_retention_ms: 0.0, ..DbConfig::default() };
    let sim = SimReplicas::new("f", 3, cfg);
    let store = &sim.store;
    let mut a = sim.open();
    exec(&mut a, "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)", vec![]);
    exec(&mut a, "INSERT INTO t VALUES (1, 0)", vec![]);
    let mut b = sim.open();
    assert_eq!(query_ints(&mut b, "SELECT n FROM t"), [0]);
    // Half the window passes: time no longer proves a's next key unused, so its commit
    // checks the manifest after the PUT (the fence this test holds back).
    sim.host.advance(31_000.0);
    // a's PUT lands; before a checks the manifest, b reads a's record, commits after it
    // and checkpoints (folding a's record).
    // Held long enough for b's work below to run first.
    let fence_head = hold_back_once(store, manifest_head);
    let b_cell = std::cell::RefCell::new(Some(b));
    let a_commit = async { a.transact(&[Statement::new("UPDATE t SET n = n + 1 WHERE id = 1")]).await };
    let b_work = async {
        let mut b = b_cell.borrow_mut().take().unwrap();
        // Let a's PUT land first.
        for _ in 0..20 {
            futures::pending!();
        }
        b.transact(&[Statement::new("UPDATE t SET n = n + 10 WHERE id = 1")]).await.unwrap();
        b
    };
    let (a_result, _b) = block_on(futures::future::join(a_commit, b_work));
    store.set_faults(None);
    assert!(fence_head.get(), "the writer's fence check was held back");
    a_result.expect("acknowledged: the record was a's own, folded by b's checkpoint");
    let mut check = sim.open();
    assert_eq!(query_ints(&mut check, "SELECT n FROM t"), [11], "each update exactly once");
}

/// Replicas of one database on a shared in-memory store and a simulated clock, so that a
/// test can let a GC retention window pass.
struct SimReplicas {
    store: Rc<MemStore>,
    host: Arc<SimHost>,
    name: &'static str,
    cfg: DbConfig,
}

impl SimReplicas {
    fn new(name: &'static str, seed: u64, cfg: DbConfig) -> Self {
        SimReplicas { store: Rc::new(MemStore::new()), host: Arc::new(SimHost::new(seed)), name, cfg }
    }

    fn context(&self) -> DbContext {
        DbContext::new(self.store.clone()).with_host(self.host.clone()).with_sleeper(engine_core::dst::sleeper(&self.host))
    }

    fn open(&self) -> Database {
        try_open_in(self.context(), self.name, self.cfg).expect("open")
    }

    /// A writer that created table `t` with one row and checkpointed, and a second replica
    /// warm on that state (it just read the manifest).
    fn writer_and_warm_replica(&self, create: &str, first_row: &str) -> (Database, Database) {
        let mut a = self.open();
        exec(&mut a, create, vec![]);
        exec(&mut a, first_row, vec![]);
        assert!(block_on(a.checkpoint()).unwrap());
        let mut x = self.open();
        assert_eq!(query_ints(&mut x, "SELECT count(*) FROM t"), [1]);
        (a, x)
    }
}

/// GC keeps garbage for a minute (the shortest window with which probes send their GET and
/// HEAD at once); checkpoints come every `records` commits, unpaced; no history.
fn minute_window(records: u64) -> DbConfig {
    DbConfig {
        checkpoint_records: records,
        checkpoint_min_interval_ms: 0.0,
        gc_retention_ms: engine_core::database::MIN_RETENTION_FOR_CONCURRENT_PROBE_MS,
        history_retention_ms: 0.0,
        ..DbConfig::default()
    }
}

/// What another isolate does while a writer's fence check (the manifest HEAD after its PUT
/// landed) is held back.
#[derive(Clone, Copy)]
enum MeanwhileElsewhere {
    /// It folds the writer's record and then checkpoints this many times more.
    Checkpoints(u32),
    /// It folds the writer's record, the GC retention window passes, and its next
    /// checkpoint collects that record and its garbage.
    WindowPasses,
}

/// Runs one writer's commit (`n + 1`) while another isolate commits (`n + 10`, each) and
/// checkpoints during the writer's fence check, as `meanwhile` says; the writer's answer
/// must be `COMMIT_OUTCOME_UNKNOWN`, and its commit applied exactly once.
fn commit_while_elsewhere_is_unknown_and_applied_once(meanwhile: MeanwhileElsewhere) {
    let sim = SimReplicas::new("fence", 7, minute_window(1));
    let (store, host) = (&sim.store, &sim.host);
    let open_sim = || sim.open();
    let mut a = open_sim();
    exec(&mut a, "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)", vec![]);
    exec(&mut a, "INSERT INTO t VALUES (1, 0)", vec![]);
    let mut b = open_sim();
    assert_eq!(query_ints(&mut b, "SELECT n FROM t"), [0]);
    // Half the window passes, so the writer's commit runs its fence check.
    host.advance(31_000.0);
    let held = hold_back_once(store, manifest_head);
    let b_cell = std::cell::RefCell::new(Some(b));
    let a_commit = async { a.transact(&[Statement::new("UPDATE t SET n = n + 1 WHERE id = 1")]).await };
    let b_work = async {
        let mut b = b_cell.borrow_mut().take().unwrap();
        for _ in 0..20 {
            futures::pending!();
        }
        let add = || [Statement::new("UPDATE t SET n = n + 10 WHERE id = 1")];
        b.transact(&add()).await.unwrap();
        match meanwhile {
            MeanwhileElsewhere::Checkpoints(k) => {
                for _ in 0..k {
                    b.transact(&add()).await.unwrap();
                }
            }
            MeanwhileElsewhere::WindowPasses => {
                host.advance(61_000.0);
                b.transact(&add()).await.unwrap();
            }
        }
        b
    };
    let (a_result, _b) = block_on(futures::future::join(a_commit, b_work));
    store.set_faults(None);
    assert!(held.get(), "the writer's fence check was held back");
    let others = match meanwhile {
        MeanwhileElsewhere::Checkpoints(k) => 1 + k as i64,
        MeanwhileElsewhere::WindowPasses => 2,
    };
    let mut check = open_sim();
    assert_eq!(query_ints(&mut check, "SELECT n FROM t"), [1 + others * 10], "the writer's commit is applied exactly once");
    match a_result {
        Err(engine_core::EngineError::CommitUnknown(_)) => {}
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
}

/// A writer's record that another isolate folded, followed by more checkpoints than the
/// fence reads history entries for, is not taken for a zombie's: whose it was cannot be
/// told, so the answer is `COMMIT_OUTCOME_UNKNOWN` and the commit is applied once (it was
/// deleted as a zombie's and run again: applied twice).
#[test]
fn a_record_folded_many_checkpoints_before_its_fence_check_is_never_applied_twice() {
    commit_while_elsewhere_is_unknown_and_applied_once(MeanwhileElsewhere::Checkpoints(12));
}

/// A writer's record that another isolate folded, and whose garbage GC then collected
/// after a whole retention window, cannot be told from a zombie's by its garbage: the
/// answer is `COMMIT_OUTCOME_UNKNOWN`, applied once (a zombie's would be deleted, run again).
#[test]
fn a_record_folded_and_collected_before_its_fence_check_is_never_applied_twice() {
    commit_while_elsewhere_is_unknown_and_applied_once(MeanwhileElsewhere::WindowPasses);
}

/// The first log PUT fails ambiguously: after it applied (the record landed) or before.
/// Either way the engine resolves the outcome by reading and the write lands exactly once.
#[test]
fn ambiguous_put_is_resolved_and_acknowledged_exactly_once() {
    for fault in [Fault::ErrorAfter, Fault::ErrorBefore] {
        let store = Rc::new(MemStore::new());
        let mut db = open_with(&store, "a", DbConfig::default(), 32 << 20);
        exec(&mut db, "CREATE TABLE t (x INTEGER)", vec![]);
        let mut first = true;
        store.set_faults(Some(Box::new(ScriptedFaults(move |op, _key: &str| {
            if op == OpKind::Put && std::mem::take(&mut first) {
                fault
            } else {
                Fault::None
            }
        }))));
        exec(&mut db, "INSERT INTO t VALUES (1)", vec![]);
        store.set_faults(None);
        let mut check = open_with(&store, "a", DbConfig::default(), 32 << 20);
        assert_eq!(query_ints(&mut check, "SELECT count(*) FROM t"), [1], "{fault:?}");
    }
}

#[test]
fn unresolvable_put_is_reported_unknown_never_success_and_the_truth_is_readable() {
    let store = Rc::new(MemStore::new());
    let mut db = open_with(&store, "a", DbConfig::default(), 32 << 20);
    exec(&mut db, "CREATE TABLE t (x INTEGER)", vec![]);
    // The PUT lands but reports failure; every read-back fails too.
    store.set_faults(Some(Box::new(ScriptedFaults(|op, key: &str| match op {
        OpKind::Put if key.contains("/log/") => Fault::ErrorAfter,
        OpKind::Get if key.contains("/log/") => Fault::ErrorBefore,
        _ => Fault::None,
    }))));
    let e = block_on(db.transact(&[Statement::new("INSERT INTO t VALUES (7)")])).unwrap_err();
    assert_eq!(e.code(), "COMMIT_OUTCOME_UNKNOWN");
    store.set_faults(None);
    // The same replica and a fresh one agree: it landed, exactly once.
    assert_eq!(query_ints(&mut db, "SELECT x FROM t"), [7]);
    let mut check = open_with(&store, "a", DbConfig::default(), 32 << 20);
    assert_eq!(query_ints(&mut check, "SELECT x FROM t"), [7]);
}

#[test]
fn group_commit_shares_one_put_and_isolates_failures() {
    let store = Rc::new(MemStore::new());
    let mut db = open_with(&store, "g", DbConfig::default(), 32 << 20);
    exec(&mut db, "CREATE TABLE t (id INTEGER PRIMARY KEY)", vec![]);
    let puts = store.counts().puts;
    let mut group: Vec<Vec<Statement>> =
        (1..=16).map(|i| vec![Statement::with_params("INSERT INTO t VALUES (?)", vec![SqlValue::Integer(i)])]).collect();
    group[5] = vec![Statement::new("INSERT INTO t VALUES (1)")]; // duplicate key: fails alone
    group.push(vec![Statement::new("SELECT count(*) FROM t")]);
    let results = block_on(db.transact_group(group));
    assert_eq!(store.counts().puts - puts, 1, "one PUT for the whole group");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 16);
    assert_eq!(results[5].as_ref().unwrap_err().code(), "SQL_ERROR");
    assert_eq!(results[16].as_ref().unwrap().results[0].rows, vec![vec![SqlValue::Integer(15)]]);
    let mut check = open_with(&store, "g", DbConfig::default(), 32 << 20);
    assert_eq!(query_ints(&mut check, "SELECT count(*) FROM t"), [15]);
}

#[test]
fn bounded_staleness_skips_the_probe_and_default_sees_everything() {
    let store = Rc::new(MemStore::new());
    let mut a = open_with(&store, "s", DbConfig::default(), 32 << 20);
    exec(&mut a, "CREATE TABLE t (x)", vec![]);
    let stale_cfg = DbConfig { max_staleness_ms: 60_000.0, ..DbConfig::default() };
    let mut b = open_with(&store, "s", stale_cfg, 32 << 20);
    // Opening proves nothing; b's first request probes, and the bound counts from there.
    assert_eq!(query_ints(&mut b, "SELECT count(*) FROM t"), [0]);
    exec(&mut a, "INSERT INTO t VALUES (1)", vec![]);
    let reads = store.counts().gets + store.counts().heads;
    assert_eq!(query_ints(&mut b, "SELECT count(*) FROM t"), [0], "within the staleness bound");
    assert_eq!(store.counts().gets + store.counts().heads, reads, "no R2 read");
    b.config_mut().max_staleness_ms = 0.0;
    assert_eq!(query_ints(&mut b, "SELECT count(*) FROM t"), [1]);
}

/// A strict read's probe whose GET is slow enough for a whole GC retention window to pass
/// after its HEAD: meanwhile another isolate commits, folds the next record into a
/// checkpoint and collects it. The GET then finds the record absent, but the HEAD is too
/// old to prove that absence real (its GET and HEAD are not one observation), so the
/// manifest is read again and the replica moves on. Had the probe counted, the replica
/// would hold the old state as proven current at its end, and a staleness-bounded read
/// after it would miss commits acknowledged a minute before it began. `first` picks the
/// probe: a read sends it ahead of itself, a write that changes nothing probes after
/// running.
fn slow_probe_straddling_a_collection(first: FirstRequest) {
    let sim = SimReplicas::new("slow", 11, minute_window(1_000));
    let (store, host) = (&sim.store, &sim.host);
    let open_sim = || sim.open();
    let mut a = open_sim();
    exec(&mut a, "CREATE TABLE t (id INTEGER PRIMARY KEY)", vec![]);
    exec(&mut a, "INSERT INTO t VALUES (1)", vec![]);
    assert!(block_on(a.checkpoint()).unwrap());
    let mut x = open_sim();
    assert_eq!(query_ints(&mut x, "SELECT count(*) FROM t"), [1]);
    let next_key = format!("db/slow/log/{:020}", x.applied_seq() + 1);
    let held = hold_back_once(store, move |op, key| op == OpKind::Get && key == next_key);
    let (sql, read_from) = match first {
        FirstRequest::Strict => ("SELECT count(*) FROM t", engine_core::ReadFrom::Latest),
        FirstRequest::WriteOfNothing => ("UPDATE t SET id = id WHERE id = 999", engine_core::ReadFrom::Latest),
    };
    let first = transaction(vec![Statement::new(sql)], read_from);
    let x_read = async {
        let _ = x.perform(vec![first]).await;
    };
    let a_work = async {
        for _ in 0..5 {
            futures::pending!();
        }
        exec_async(&mut a, "INSERT INTO t VALUES (2)").await;
        assert!(a.checkpoint().await.unwrap());
        host.advance(61_000.0);
        exec_async(&mut a, "INSERT INTO t VALUES (3)").await;
        assert!(a.checkpoint().await.unwrap());
    };
    block_on(futures::future::join(x_read, a_work));
    store.set_faults(None);
    assert!(held.get(), "the probe's GET was held back");
    let bounded = transaction(vec![Statement::new("SELECT count(*) FROM t")], engine_core::ReadFrom::WithinMs(50.0));
    let done = block_on(x.perform(vec![bounded])).remove(0).expect("read");
    let rows = match done.reply {
        engine_core::Reply::Transaction(r) => r[0].rows.clone(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(rows, vec![vec![SqlValue::Integer(3)]], "a read bounded by 50 ms sees commits acknowledged a minute before it");
}

async fn exec_async(db: &mut Database, sql: &str) {
    db.transact(&[Statement::new(sql)]).await.unwrap();
}

/// The first request of [`slow_probe_straddling_a_collection`].
enum FirstRequest {
    /// A strict read: its probe goes out ahead of it.
    Strict,
    /// An UPDATE that matches no row: nothing to commit, so it probes (its GET and HEAD at
    /// once) after running, as a read sent nothing ahead would.
    WriteOfNothing,
}

#[test]
fn a_read_whose_probe_straddles_a_collection_does_not_count_it() {
    slow_probe_straddling_a_collection(FirstRequest::Strict);
}

#[test]
fn a_write_of_nothing_whose_probe_straddles_a_collection_does_not_count_it() {
    slow_probe_straddling_a_collection(FirstRequest::WriteOfNothing);
}

#[test]
fn an_idle_database_makes_no_store_operations() {
    let store = Rc::new(MemStore::new());
    let db = open_with(&store, "idle", DbConfig::default(), 32 << 20);
    let before = store.counts();
    drop(db);
    assert_eq!(store.counts(), before);
    assert!(try_open(&store, "idle", DbConfig::default(), 1 << 20).is_ok());
}

/// A zombie writer's record can outlive its failed fence check at a key GC already
/// collected. A replica that later reads it (as "another writer's record") must not answer
/// from the mix of that record and the real ones after it (crash-gate seed 17816).
#[test]
fn a_zombie_record_left_behind_is_never_read_as_real() {
    let store = Rc::new(MemStore::new());
    let manual = DbConfig { checkpoint_records: 1_000, gc_retention_ms: 0.0, history_retention_ms: 0.0, ..DbConfig::default() };
    let mut a = open_with(&store, "zr", manual, 32 << 20);
    exec(&mut a, "CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)", vec![]);
    exec(&mut a, "CREATE TABLE u (id INTEGER PRIMARY KEY)", vec![]);
    assert!(block_on(a.checkpoint()).unwrap());
    // The zombie-to-be reads everything it will need, then stalls at the checkpoint.
    let mut z = open_with(&store, "zr", manual, 32 << 20);
    assert_eq!(query_ints(&mut z, "SELECT (SELECT count(*) FROM t) + (SELECT count(*) FROM u)"), [0]);
    let stalled_at = z.applied_seq();
    // The next record is folded alone, then collected by the checkpoint after.
    exec(&mut a, "INSERT INTO u VALUES (1)", vec![]);
    assert!(block_on(a.checkpoint()).unwrap());
    for _ in 0..3 {
        exec(&mut a, "INSERT INTO t (who) VALUES ('a')", vec![]);
    }
    assert!(block_on(a.checkpoint()).unwrap());
    let zombie_key = format!("db/zr/log/{:020}", stalled_at + 1);
    assert!(store.raw_get(&zombie_key).is_none(), "collected");
    assert!(store.raw_get(&format!("db/zr/log/{:020}", stalled_at + 2)).is_some(), "retired, still there");

    // The zombie's PUT lands where the record was; its fence check fails with an error.
    let fail_once = |kind: OpKind| {
        let mut armed = true;
        ScriptedFaults(move |op, key: &str| {
            if op == kind && key.ends_with("/manifest") && std::mem::take(&mut armed) {
                Fault::ErrorBefore
            } else {
                Fault::None
            }
        })
    };
    store.set_faults(Some(Box::new(fail_once(OpKind::Head))));
    let e = block_on(z.transact(&[Statement::new("INSERT INTO t (who) VALUES ('zombie')")])).unwrap_err();
    assert_eq!(e.code(), "COMMIT_OUTCOME_UNKNOWN");
    assert!(store.raw_get(&zombie_key).is_some(), "the zombie's record stayed behind");
    // Its next write loses the race to its own record, reads it and the real records
    // after it, and fails reading the manifest that would expose it.
    store.set_faults(Some(Box::new(fail_once(OpKind::Get))));
    let e = block_on(z.transact(&[Statement::new("INSERT INTO t (who) VALUES ('z2')")])).unwrap_err();
    assert_eq!(e.code(), "STORAGE_UNAVAILABLE");
    store.set_faults(None);
    // Every answer from now on reflects the real history.
    assert_eq!(query_ints(&mut z, "SELECT count(*) FROM u"), [1], "the real record's row");
    assert_eq!(query_ints(&mut z, "SELECT count(*) FROM t WHERE who = 'zombie'"), [0]);
    exec(&mut z, "INSERT INTO t (who) VALUES ('z3')", vec![]);
    let mut check = open_with(&store, "zr", manual, 32 << 20);
    assert_eq!(query_ints(&mut check, "SELECT count(*) FROM t"), [4]);
    assert_eq!(query_ints(&mut check, "SELECT count(*) FROM u"), [1]);
}

/// An operation that runs out of store calls before its commit's PUT answers
/// `LIMIT_EXCEEDED` and commits nothing; reads past the budget are refused the same way.
#[test]
fn running_out_of_store_calls_commits_nothing_and_names_the_limit() {
    let mem = Rc::new(MemStore::new());
    let counting = Rc::new(engine_core::store::CountingStore::new(mem.clone() as Rc<dyn engine_core::ObjectStore>));
    let ctx = DbContext::new(counting.clone());
    let mut db = try_open_in(ctx, "calls", DbConfig::default()).expect("open");
    exec(&mut db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", vec![]);
    exec(&mut db, "INSERT INTO t (v) VALUES ('kept')", vec![]);

    counting.budget_calls(Some(0));
    let e = block_on(db.transact(&[Statement::new("INSERT INTO t (v) VALUES ('refused')")])).unwrap_err();
    assert_eq!(e.code(), "LIMIT_EXCEEDED", "{e}");
    assert!(e.to_string().contains("R2_CALLS"), "{e}");
    counting.budget_calls(None);

    let mut fresh = open_with(&mem, "calls", DbConfig::default(), 32 << 20);
    assert_eq!(query_ints(&mut fresh, "SELECT count(*) FROM t"), [1], "nothing of the refused write is there");
    exec(&mut db, "INSERT INTO t (v) VALUES ('after')", vec![]);
    assert_eq!(query_ints(&mut fresh, "SELECT count(*) FROM t"), [2]);
}

/// A cold open lists the database's folder from its checkpoint on: the listing shows the
/// log tail and the manifest's etag at once, so the first request needs no HEAD (one R2
/// read and one round trip less), and still answers with every commit. With a retention
/// window too short to bound the listing's age, the request proves itself with a HEAD.
#[test]
fn a_cold_open_proves_itself_current_with_its_own_listing() {
    let store = Rc::new(MemStore::new());
    let mut w = open(&store, "c");
    exec(&mut w, "CREATE TABLE t (x INTEGER PRIMARY KEY)", vec![]);
    for i in 0..40 {
        exec(&mut w, "INSERT INTO t VALUES (?)", vec![SqlValue::Integer(i)]);
    }
    assert!(store.keys().iter().any(|k| k.ends_with("/manifest")), "a checkpoint was made");
    let cold = |config: DbConfig| {
        let before = store.counts();
        let ctx = DbContext::new(store.clone() as Rc<dyn ObjectStore>);
        let mut r = block_on(Database::open_for_waiting_requests(ctx, Layout::new("", "c"), config)).unwrap();
        assert_eq!(query_ints(&mut r, "SELECT count(*) FROM t"), [40]);
        let after = store.counts();
        (after.lists - before.lists, after.heads - before.heads)
    };
    assert_eq!(cold(DbConfig::default()), (1, 0), "one LIST, no HEAD");
    let short = DbConfig { gc_retention_ms: 0.0, history_retention_ms: 0.0, ..DbConfig::default() };
    let (lists, heads) = cold(short);
    assert_eq!(lists, 1);
    assert!(heads >= 1, "with no retention window the listing is not enough: the manifest is read after it");
}

/// A checkpoint's manifest carries page 1 and the table and index roots, so a cold point
/// query reads the manifest, lists the log, and fetches only the page group of its leaf:
/// no read for the schema or the root of the B-tree.
#[test]
fn a_cold_point_query_reads_only_its_leaf_group_after_the_manifest() {
    let store = Rc::new(MemStore::new());
    let mut w = open(&store, "c");
    exec(&mut w, "CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)", vec![]);
    exec(&mut w, "CREATE INDEX t_pad ON t (pad)", vec![]);
    exec(&mut w, "WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 3000) INSERT INTO t SELECT v, randomblob(300) FROM s", vec![]);
    block_on(w.checkpoint()).unwrap();
    assert_eq!(w.checkpoint_seq(), w.applied_seq(), "everything is checkpointed");
    let manifest = engine_core::manifest::Manifest::decode(&store.raw_get("db/c/manifest").unwrap()).unwrap();
    let carried: Vec<u32> = manifest.pages.iter().map(|p| p.page_no).collect();
    assert_eq!(carried.len(), 3, "page 1, the table's root and the index's root: {carried:?}");
    assert_eq!(carried[0], 1);

    let before = store.counts();
    let ctx = DbContext::new(store.clone() as Rc<dyn ObjectStore>);
    let mut r = block_on(Database::open_for_waiting_requests(ctx, Layout::new("", "c"), DbConfig::default())).unwrap();
    assert_eq!(query_ints(&mut r, "SELECT length(pad) FROM t WHERE id = 2900"), [300]);
    let after = store.counts();
    let reads = (after.gets - before.gets, after.lists - before.lists, after.heads - before.heads);
    assert_eq!(reads, (2, 1, 0), "GETs of the manifest and of the leaf's page group, one LIST, no HEAD");
}

/// Checkpoints write the manifest, one key that R2 takes about one write a second to: a
/// checkpoint the commits call for waits until the last one is `checkpoint_min_interval_ms`
/// old. What it leaves (and any tail a cold reader would replay a lot of) is folded once the
/// writer has been quiet that long.
#[test]
fn checkpoints_are_paced_and_a_quiet_writer_folds_the_tail() {
    let sim = twill_tests::World::new(7);
    let config = DbConfig { checkpoint_records: 2, quiet_checkpoint_bytes: 64 << 10, ..DbConfig::default() };
    let mut w = sim.open("q", config);
    exec(&mut w, "CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB)", vec![]);
    exec(&mut w, "INSERT INTO t VALUES (1, randomblob(10))", vec![]);
    assert_eq!(w.checkpoint_seq(), 2, "two records: a checkpoint");
    for id in 2..6 {
        exec(&mut w, "INSERT INTO t VALUES (?, randomblob(10))", vec![SqlValue::Integer(id)]);
    }
    assert_eq!((w.checkpoint_seq(), w.applied_seq()), (2, 6), "the next checkpoint is put off: the last is under 1 s old");
    assert!(w.quiet_checkpoint_due(), "a put-off checkpoint is due once the writer is quiet");
    let wait = w.config().checkpoint_min_interval_ms;
    assert!(!block_on(w.checkpoint_if_quiet()).unwrap(), "not before the interval has passed");
    sim.host.advance(wait);
    assert!(block_on(w.checkpoint_if_quiet()).unwrap());
    assert_eq!(w.checkpoint_seq(), 6);
    assert!(!w.quiet_checkpoint_due(), "nothing left to fold");

    // A small tail is left to the next commits; a large one is folded when the writer is quiet.
    sim.host.advance(2_000.0);
    w.config_mut().checkpoint_records = 10;
    exec(&mut w, "INSERT INTO t VALUES (100, randomblob(100))", vec![]);
    assert!(!w.quiet_checkpoint_due(), "a one-page tail stays");
    exec(&mut w, "WITH RECURSIVE s(v) AS (SELECT 200 UNION ALL SELECT v + 1 FROM s WHERE v < 300) INSERT INTO t SELECT v, randomblob(1000) FROM s", vec![]);
    assert_eq!(w.checkpoint_seq(), 6, "under both thresholds");
    assert!(w.quiet_checkpoint_due(), "a 100 KB tail is folded once the writer is quiet");
    sim.host.advance(wait);
    assert!(block_on(w.checkpoint_if_quiet()).unwrap());
    assert_eq!(w.checkpoint_seq(), w.applied_seq());
}

#[test]
fn a_manifest_written_by_a_clock_far_ahead_holds_checkpoints_back_one_interval_at_most() {
    let here = twill_tests::World::new(8);
    let ahead = twill_tests::World { store: here.store.clone(), host: Arc::new(SimHost::new(9)) };
    ahead.host.advance(3.0 * 3_600_000.0);
    let config = DbConfig { checkpoint_records: 1, ..DbConfig::default() };
    let mut fast = ahead.open("skew", config.clone());
    exec(&mut fast, "CREATE TABLE t (id INTEGER PRIMARY KEY)", vec![]);
    assert_eq!(fast.checkpoint_seq(), 1, "the isolate three hours ahead wrote the manifest");

    let mut w = here.open("skew", config);
    exec(&mut w, "INSERT INTO t VALUES (1)", vec![]);
    assert_eq!((w.checkpoint_seq(), w.applied_seq()), (1, 2), "put off: the manifest looks new");
    here.host.advance(1_000.0);
    assert!(block_on(w.checkpoint_if_quiet()).unwrap(), "one interval later the tail is folded");
    assert_eq!(w.checkpoint_seq(), 2);
}

/// Counts round trips: stretches of time with at least one store call in flight. Every call
/// of the store beneath is slow (it yields once before applying), so calls issued together
/// overlap and calls issued one after the other do not.
struct RoundTrips {
    inner: Rc<MemStore>,
    in_flight: std::cell::Cell<u32>,
    rounds: std::cell::Cell<u32>,
}

impl RoundTrips {
    fn new(inner: Rc<MemStore>) -> Self {
        struct EveryCallSlow;
        impl engine_core::mem_store::FaultInjector for EveryCallSlow {
            fn decide(&mut self, _op: OpKind, _key: &str) -> Fault {
                Fault::Delay(1)
            }
        }
        inner.set_faults(Some(Box::new(EveryCallSlow)));
        RoundTrips { inner, in_flight: Default::default(), rounds: Default::default() }
    }

    async fn timed<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        if self.in_flight.get() == 0 {
            self.rounds.set(self.rounds.get() + 1);
        }
        self.in_flight.set(self.in_flight.get() + 1);
        let out = call.await;
        self.in_flight.set(self.in_flight.get() - 1);
        out
    }
}

#[async_trait::async_trait(?Send)]
impl ObjectStore for RoundTrips {
    async fn get(&self, key: &str, range: Option<store::ByteRange>) -> Result<Option<store::Object>, store::StoreError> {
        self.timed(self.inner.get(key, range)).await
    }
    async fn head(&self, key: &str) -> Result<Option<store::ObjectMeta>, store::StoreError> {
        self.timed(self.inner.head(key)).await
    }
    async fn put(&self, key: &str, body: &[u8], condition: store::PutCondition) -> Result<store::PutOutcome, store::StoreError> {
        self.timed(self.inner.put(key, body, condition)).await
    }
    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<store::ListPage, store::StoreError> {
        self.timed(self.inner.list(prefix, start_after, limit)).await
    }
    async fn list_folders(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<store::FolderPage, store::StoreError> {
        self.timed(self.inner.list_folders(prefix, start_after, limit)).await
    }
    async fn delete(&self, key: &str) -> Result<(), store::StoreError> {
        self.timed(self.inner.delete(key)).await
    }
}

/// A strict read proves freshness with the next log record's GET and the manifest's HEAD.
/// They go out before the read runs, so a read that must fetch a page from R2 waits for the
/// page and the proof together: one round trip, not two. A read on cached pages is one
/// round trip too.
#[test]
fn a_strict_read_that_fetches_a_page_waits_one_round_trip() {
    let mem = Rc::new(MemStore::new());
    let mut w = open(&mem, "rt");
    exec(&mut w, "CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)", vec![]);
    exec(&mut w, "WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 20000) INSERT INTO t SELECT v, randomblob(300) FROM s", vec![]);
    block_on(w.checkpoint()).unwrap();

    let slow = Rc::new(RoundTrips::new(mem.clone()));
    let ctx = DbContext::new(slow.clone() as Rc<dyn ObjectStore>);
    let mut r = block_on(Database::open_for_waiting_requests(ctx, Layout::new("", "rt"), DbConfig::default())).unwrap();
    assert_eq!(query_ints(&mut r, "SELECT length(pad) FROM t WHERE id = 10"), [300], "the first read uses the open's listing");
    let mut read = |id: i64| {
        let (rounds, reads) = (slow.rounds.get(), mem.counts());
        assert_eq!(query_ints(&mut r, &format!("SELECT length(pad) FROM t WHERE id = {id}")), [300]);
        let after = mem.counts();
        (slow.rounds.get() - rounds, after.gets - reads.gets + after.heads - reads.heads)
    };
    read(12900); // the B-tree's interior pages
    // The open's listing read the manifest a moment ago, so time proves the next record's
    // absence: the probe is its GET alone (no HEAD; see `time_proves_absence`).
    assert_eq!(read(15000), (1, 2), "a leaf's page group and the next record: together");
    assert_eq!(read(15001), (1, 1), "cached page: the probe's one GET alone");
    assert_eq!(read(7000), (1, 2));

    // Another replica commits: the record the probe ahead found is applied as it is (no
    // second GET), then the next one's GET and the manifest's HEAD go out together, and
    // the read runs again on the new state and proves it: three round trips.
    exec(&mut w, "UPDATE t SET pad = randomblob(300) WHERE id = 15001", vec![]);
    let (rounds, before) = (slow.rounds.get(), mem.counts());
    assert_eq!(query_ints(&mut r, "SELECT length(pad) FROM t WHERE id = 15001"), [300]);
    let after = mem.counts();
    assert_eq!(slow.rounds.get() - rounds, 3);
    assert_eq!(after.gets - before.gets, 3, "the record once, the position after it twice");
}

/// A replica that applies another writer's schema change reads the whole new schema,
/// fetching the pages of it that its small cache no longer holds.
#[test]
fn a_schema_change_whose_pages_are_not_cached_is_read_in_full() {
    let store = Rc::new(MemStore::new());
    let mut a = open_with(&store, "sc", small_checkpoints(), 32 << 20);
    let padding = "x".repeat(900);
    for i in 0..200 {
        exec(&mut a, &format!("CREATE TABLE t{i} (id INTEGER PRIMARY KEY, v TEXT DEFAULT '{padding}')"), vec![]);
    }
    // The schema spans some fifty pages; b's cache holds sixteen.
    let mut b = open_with(&store, "sc", DbConfig::default(), 64 << 10);
    assert_eq!(query_ints(&mut b, "SELECT count(*) FROM t0"), [0]);
    exec(&mut a, "CREATE TABLE late (x)", vec![]);
    exec(&mut a, "INSERT INTO late VALUES (7)", vec![]);
    assert_eq!(query_ints(&mut b, "SELECT x FROM late"), [7]);
    assert_eq!(query_ints(&mut b, "SELECT count(*) FROM t199"), [0]);
    assert_eq!(query_ints(&mut b, "SELECT count(*) FROM sqlite_schema"), [201]);
}

/// Which store call of a cold open another isolate's checkpoint and GC overtake.
#[derive(Clone, Copy)]
enum Overtaken {
    /// The LIST of the log after the manifest: the records it should show are gone.
    Listing,
    /// The GET of a record the LIST showed: it is gone by then.
    RecordGet,
}

/// A cold open reads the manifest, then lists the log after it. With no GC retention window
/// another isolate may fold and collect those records in between: the open moves onto the
/// newer checkpoint and lists again (it failed with "log record N is missing").
fn open_overtaken_by_a_collection(overtaken: Overtaken) {
    let store = Rc::new(MemStore::new());
    let cfg = DbConfig { checkpoint_records: 1_000, gc_retention_ms: 0.0, history_retention_ms: 0.0, checkpoint_min_interval_ms: 0.0, ..DbConfig::default() };
    let mut a = open_with(&store, "ol", cfg, 32 << 20);
    exec(&mut a, "CREATE TABLE t (id INTEGER PRIMARY KEY)", vec![]);
    assert!(block_on(a.checkpoint()).unwrap());
    let first_record = format!("db/ol/log/{:020}", a.applied_seq() + 1);
    exec(&mut a, "INSERT INTO t VALUES (1)", vec![]);
    exec(&mut a, "INSERT INTO t VALUES (2)", vec![]);
    let held = hold_back_once(&store, move |op, key| match overtaken {
        Overtaken::Listing => op == OpKind::List,
        Overtaken::RecordGet => op == OpKind::Get && key == first_record,
    });
    let x_open = Database::open(DbContext::new(store.clone()), Layout::new("", "ol"), cfg);
    let a_work = async {
        for _ in 0..5 {
            futures::pending!();
        }
        for id in 3..=5 {
            a.transact(&[Statement::with_params("INSERT INTO t VALUES (?)", vec![SqlValue::Integer(id)])]).await.unwrap();
            if id < 5 {
                assert!(a.checkpoint().await.unwrap());
            }
        }
    };
    let (x, ()) = block_on(futures::future::join(x_open, a_work));
    store.set_faults(None);
    assert!(held.get(), "the open's call was held back");
    assert!(store.raw_get(&format!("db/ol/log/{:020}", 2)).is_none(), "collected while the open ran");
    let mut x = x.expect("the open moves onto the newer checkpoint");
    assert_eq!(query_ints(&mut x, "SELECT count(*) FROM t"), [5]);
}

#[test]
fn an_open_whose_listing_is_overtaken_by_a_collection_moves_on() {
    open_overtaken_by_a_collection(Overtaken::Listing);
}

#[test]
fn an_open_whose_record_get_is_overtaken_by_a_collection_moves_on() {
    open_overtaken_by_a_collection(Overtaken::RecordGet);
}

/// A purging deletion publishes its checkpoint and then deletes the log records before it.
/// A strict read whose probe saw the manifest before that checkpoint and sends its GET of
/// the next record after the purge must not take the purged record's absence for the end
/// of the log: it would answer from a state older than commits acknowledged before the
/// read began. Either the state before the deletion or the deleted one is right.
#[test]
fn a_strict_read_racing_a_purge_never_answers_from_before_acknowledged_commits() {
    let sim = SimReplicas::new("racing", 5, minute_window(1_000));
    let store = &sim.store;
    let (mut a, mut x) = sim.writer_and_warm_replica("CREATE TABLE t (id INTEGER PRIMARY KEY)", "INSERT INTO t VALUES (1)");
    for id in 2..=4 {
        exec(&mut a, &format!("INSERT INTO t VALUES ({id})"), vec![]);
    }
    let next_key = format!("db/racing/log/{:020}", x.applied_seq() + 1);
    let held = hold_back_once(store, move |op, key| op == OpKind::Get && key == next_key);
    let read = transaction(vec![Statement::new("SELECT count(*) FROM t")], engine_core::ReadFrom::Latest);
    let x_read = async { x.perform(vec![read]).await.remove(0) };
    let a_purge = async {
        for _ in 0..5 {
            futures::pending!();
        }
        let deleted = a.delete(engine_core::DeleteMode::Purge).await.unwrap();
        assert!(deleted.purge.is_some_and(|p| p.complete), "{deleted:?}");
    };
    let (answer, ()) = block_on(futures::future::join(x_read, a_purge));
    store.set_faults(None);
    assert!(held.get(), "the probe's GET was held back");
    assert_rows_or(answer, vec![vec![SqlValue::Integer(4)]], |e| e.to_string().contains("no such table"));
}

/// A racing read's first statement answers `want` (the state every acknowledged commit
/// made), or the read ends in an error the race excuses: never an answer from another state.
fn assert_rows_or(
    answer: Result<engine_core::Done, engine_core::EngineError>,
    want: Vec<Vec<SqlValue>>,
    excused: impl Fn(&engine_core::EngineError) -> bool,
) {
    match answer {
        Ok(done) => match done.reply {
            engine_core::Reply::Transaction(r) => assert_eq!(r[0].rows, want, "answered from another state than the acknowledged one"),
            other => panic!("unexpected {other:?}"),
        },
        Err(e) => assert!(excused(&e), "{e}"),
    }
}

/// One request: `statements` as one transaction, answered from `read_from`.
fn transaction(statements: Vec<Statement>, read_from: engine_core::ReadFrom) -> engine_core::Request {
    engine_core::Request { work: engine_core::Work::Transaction(statements), read_from }
}

fn is_conflict(e: &engine_core::EngineError) -> bool {
    matches!(e, engine_core::EngineError::Conflict { .. })
}

/// What a warm replica does next in [`a_replica_idle_for_half_the_window_checks_the_manifest_again`].
#[derive(Clone, Copy)]
enum AfterIdle {
    StrictRead,
    Commit,
}

/// Within half the GC window of the manifest read that proved it current, a replica proves
/// a strict read with one GET and a commit with its PUT alone (time proves the next key
/// unused). Idle for longer, it checks the manifest again: meanwhile its next record may
/// have been created, folded and collected, and a GET alone would take its absence for the
/// end of the log (a stale read), a PUT alone would land a zombie's record.
fn a_replica_idle_for_half_the_window_checks_the_manifest_again(next: AfterIdle) {
    let sim = SimReplicas::new("idle", 13, minute_window(1_000));
    let (store, host) = (&sim.store, &sim.host);
    let (mut a, mut x) = sim.writer_and_warm_replica("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)", "INSERT INTO t VALUES (1, 'a')");
    // Warm: one call each.
    let calls = |before: engine_core::mem_store::MemStoreCounts| {
        let after = store.counts();
        (after.gets - before.gets, after.heads - before.heads, after.puts - before.puts)
    };
    let before = store.counts();
    assert_eq!(query_ints(&mut x, "SELECT count(*) FROM t"), [1]);
    assert_eq!(calls(before), (1, 0, 0), "a warm strict read: the next record's GET alone");
    let before = store.counts();
    exec(&mut x, "INSERT INTO t VALUES (2, 'x')", vec![]);
    assert_eq!(calls(before), (0, 0, 1), "a warm commit: its PUT alone");

    // x idles; a commits, checkpoints, the window passes and a's next checkpoint collects
    // the record after x's state.
    host.advance(31_000.0);
    exec(&mut a, "INSERT INTO t VALUES (3, 'a')", vec![]);
    assert!(block_on(a.checkpoint()).unwrap());
    host.advance(61_000.0);
    exec(&mut a, "INSERT INTO t VALUES (4, 'a')", vec![]);
    assert!(block_on(a.checkpoint()).unwrap());
    assert!(store.raw_get(&format!("db/idle/log/{:020}", x.applied_seq() + 1)).is_none(), "collected");

    match next {
        AfterIdle::StrictRead => {
            assert_eq!(query_ints(&mut x, "SELECT count(*) FROM t"), [4], "a stale read");
        }
        AfterIdle::Commit => {
            exec(&mut x, "INSERT INTO t VALUES (5, 'x')", vec![]);
            let mut check = sim.open();
            assert_eq!(query_ints(&mut check, "SELECT count(*) FROM t"), [5], "x's commit is read, with all before it");
        }
    }
    // Proven again: one call each once more.
    let before = store.counts();
    assert!(query_ints(&mut x, "SELECT count(*) FROM t")[0] >= 4);
    assert_eq!(calls(before), (1, 0, 0));
}

#[test]
fn a_strict_read_after_half_a_window_idle_checks_the_manifest_again() {
    a_replica_idle_for_half_the_window_checks_the_manifest_again(AfterIdle::StrictRead);
}

#[test]
fn a_commit_after_half_a_window_idle_checks_the_manifest_again() {
    a_replica_idle_for_half_the_window_checks_the_manifest_again(AfterIdle::Commit);
}

/// A probe sends the next record's GET and the manifest's HEAD at once only because both
/// land within half the GC window: a record absent at a GET that landed later may have been
/// created, folded and collected after the HEAD saw the old manifest. Here the GET is held
/// back while another writer commits that record, checkpoints, and a whole window passes
/// until its next checkpoint collects it: the probe must not take the HEAD it sent with
/// the GET as proof, and checks the manifest again after (so it never answers 1 row where
/// 4 were acknowledged; the request may end in a conflict instead, its budget spent).
fn a_probe_whose_get_lands_after_half_the_window_checks_the_manifest_again(statements: Vec<Statement>) {
    let sim = SimReplicas::new("slow-probe", 29, minute_window(1_000));
    let (store, host) = (&sim.store, &sim.host);
    let (mut a, mut x) = sim.writer_and_warm_replica("CREATE TABLE t (id INTEGER PRIMARY KEY)", "INSERT INTO t VALUES (1)");
    // Past half the window since x last read the manifest: its probe sends GET and HEAD together.
    host.advance(31_000.0);
    let next_key = format!("db/slow-probe/log/{:020}", x.applied_seq() + 1);
    let collected_key = next_key.clone();
    let held = hold_back_once(store, move |op, key| op == OpKind::Get && key == next_key);
    let read = transaction(statements, engine_core::ReadFrom::Latest);
    let x_read = async { x.perform(vec![read]).await.remove(0) };
    let a_writes = async {
        for _ in 0..5 {
            futures::pending!();
        }
        for id in 2..=3 {
            a.transact(&[Statement::new(format!("INSERT INTO t VALUES ({id})"))]).await.unwrap();
        }
        assert!(a.checkpoint().await.unwrap());
        host.advance(61_000.0);
        a.transact(&[Statement::new("INSERT INTO t VALUES (4)")]).await.unwrap();
        assert!(a.checkpoint().await.unwrap());
        assert!(store.raw_get(&collected_key).is_none(), "the record after x's state is collected");
    };
    let (answer, ()) = block_on(futures::future::join(x_read, a_writes));
    store.set_faults(None);
    assert!(held.get(), "the probe's GET was held back");
    // The read may find the log moved on with its budget spent (the probe took a simulated
    // minute): a conflict, not an answer.
    assert_rows_or(answer, vec![vec![SqlValue::Integer(4)]], is_conflict);
}

/// Reads alone: the probe is sent ahead, beside the local run.
#[test]
fn a_probe_sent_ahead_of_reads_whose_get_lands_late_checks_the_manifest_again() {
    a_probe_whose_get_lands_after_half_the_window_checks_the_manifest_again(vec![Statement::new("SELECT count(*) FROM t")]);
}

/// A write that changed nothing: no record to publish, so the probe runs after the local run.
#[test]
fn a_probe_after_a_write_of_nothing_whose_get_lands_late_checks_the_manifest_again() {
    a_probe_whose_get_lands_after_half_the_window_checks_the_manifest_again(vec![
        Statement::new("SELECT count(*) FROM t"),
        Statement::new("DELETE FROM t WHERE id = 99"),
    ]);
}

/// A cold open's listing shows the log tail and the manifest at one instant, so with the
/// manifest unchanged the records it lists are trusted and it stands in for the first
/// request's probe, but only if the GETs of those records land within half the GC window.
/// Here the GET of the one listed record is held back while the writer folds it, a window
/// passes, its next checkpoint collects it, and a zombie (a replica still on the old state)
/// creates that key again with a write nobody acknowledges. The open must not trust what
/// it then reads: the waiting read answers the real state (3 rows, row 2 by `a`), never the
/// zombie's (2 rows, row 2 by `z`), or ends in a conflict once its budget is spent.
#[test]
fn an_open_whose_record_gets_land_after_half_the_window_checks_the_manifest_again() {
    let sim = SimReplicas::new("slow-open", 31, minute_window(1_000));
    let (store, host) = (&sim.store, &sim.host);
    let (mut a, mut zombie) = sim.writer_and_warm_replica("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)", "INSERT INTO t VALUES (1, 'a')");
    exec(&mut a, "INSERT INTO t VALUES (2, 'a')", vec![]);
    let listed_key = format!("db/slow-open/log/{:020}", a.applied_seq());
    // The GET of the listed record is held back once; the zombie's clean-up of its record
    // fails (as if its isolate died right after the PUT).
    let (held, zombie_dies) = (Rc::new(std::cell::Cell::new(false)), Rc::new(std::cell::Cell::new(false)));
    store.set_faults(Some(Box::new(ScriptedFaults({
        let (held, zombie_dies, listed_key) = (held.clone(), zombie_dies.clone(), listed_key.clone());
        move |op, key: &str| match op {
            OpKind::Get if key == listed_key && !held.get() => {
                held.set(true);
                Fault::Delay(200)
            }
            OpKind::Delete if key == listed_key && zombie_dies.get() => Fault::ErrorBefore,
            _ => Fault::None,
        }
    }))));
    let x_open = Database::open_for_waiting_requests(sim.context(), Layout::new("", sim.name), sim.cfg);
    let meanwhile = async {
        for _ in 0..5 {
            futures::pending!();
        }
        assert!(a.checkpoint().await.unwrap());
        host.advance(61_000.0);
        a.transact(&[Statement::new("INSERT INTO t VALUES (3, 'a')")]).await.unwrap();
        assert!(a.checkpoint().await.unwrap());
        assert!(store.raw_get(&listed_key).is_none(), "the listed record is collected");
        zombie_dies.set(true);
        let zombie_write = zombie.transact(&[Statement::new("INSERT INTO t VALUES (2, 'z')")]).await;
        assert!(zombie_write.is_err(), "the zombie's write is not acknowledged: {zombie_write:?}");
        assert!(store.raw_get(&listed_key).is_some(), "the zombie created the collected key again");
    };
    let (x, ()) = block_on(futures::future::join(x_open, meanwhile));
    store.set_faults(None);
    assert!(held.get(), "the GET of the listed record was held back");
    let mut x = x.expect("open");
    let read = transaction(
        vec![Statement::new("SELECT count(*), (SELECT who FROM t WHERE id = 2) FROM t")],
        engine_core::ReadFrom::Latest,
    );
    let answer = block_on(x.perform(vec![read])).remove(0);
    assert_rows_or(answer, vec![vec![SqlValue::Integer(3), SqlValue::Text("a".into())]], is_conflict);
}
