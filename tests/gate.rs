//! The crash gate (Exp 4) as a library, shared by the test (`tests/crash_gate.rs`, a few
//! thousand seeds in `make test`) and the soak runner (`bin/crash_soak.rs`, `make soak`).
//!
//! One seed: several replicas of one database (isolates) run rounds of concurrent work
//! against the in-memory store, with seeded faults (errors before and after an operation
//! applies, latency that reorders the replicas' operations, process crashes, stalls that let
//! the GC retention window pass mid-operation) and a seeded
//! clock and random source, so a seed replays exactly. The work: single transactions,
//! groups committed together, Hrana-style scripts (a batch with BEGIN/COMMIT, an `exec` of
//! autocommit statements), interactive transactions carried from one replica to another,
//! reads that are strict, bounded by a bookmark, or bounded by staleness, and in half the
//! seeds one deletion of the database halfway (purging or keeping history; the scheduled
//! sweeps then run now and then), after which the tables are created again and work goes on.
//!
//! The oracle checks the whole contract, during the run and after recovery:
//! * an acknowledged commit is present, exactly once (every row's id is unique and the
//!   counter equals the rows);
//! * an answer that promises nothing was committed (`WRITE_CONFLICT`, `STORAGE_UNAVAILABLE`,
//!   `SQL_ERROR`, `TRANSACTION_CONFLICT`, limits) left nothing behind, and no read ever saw it;
//!   only `COMMIT_OUTCOME_UNKNOWN` (or a crash) may go either way;
//! * no read is torn, and a strict read reflects every commit acknowledged before it began
//!   (linearizable); a bookmark read reflects every commit at or before its bookmark; a
//!   staleness read every commit acknowledged more than its bound before it began (a
//!   deletion is a commit like the others: a read from after it sees nothing from before it);
//! * replicas that survived agree with a fresh recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use engine_core::cache::PageCache;
use engine_core::dst::SimHost;
use engine_core::mem_store::{FaultInjector, MemStore, SeededFaults, SplitMix64};
use engine_core::script::{Action, Cond, Script, Step, StepOutcome};
use engine_core::txn::{OpenAtEnd, TxLog};
use engine_core::{
    Database, DbConfig, DbContext, DeleteMode, Done, EngineError, Layout, ReadFrom, Reply, Request, SqlValue, Statement, Work,
};

use crate::block_on;

const REPLICAS: usize = 3;
/// Transactions each seed submits.
const TRANSACTIONS: u64 = 24;
/// A staleness bound the gate's bounded reads use (simulated ms).
const STALENESS_MS: f64 = 50.0;

/// The gate's engine settings: frequent checkpoints, immediate GC, an orphan sweep at every
/// checkpoint, a short commit budget (the simulated clock moves on every reading). A third
/// of the seeds keep no history; the others keep a short window (simulated ms), so that
/// history entries, retired generations and their collection are exercised under faults.
/// A quarter keep GC garbage for the shortest window with which freshness probes issue
/// their GET and HEAD at once (and reads send them ahead of themselves), so that those
/// probes run under faults too, with stalls that let that window pass ([`Stalls`]); the rest
/// collect at once and probe one call after another.
pub fn config(seed: u64) -> DbConfig {
    const HISTORY_MS: [f64; 3] = [0.0, 300.0, 3_000.0];
    let gc_retention_ms = if (seed / 6) % 4 == 3 { engine_core::database::MIN_RETENTION_FOR_CONCURRENT_PROBE_MS } else { 0.0 };
    let mut limits = engine_core::local::ExecLimits::default();
    // A third of the seeds bound what a request and a record may write to six pages, so
    // that groups commit in several records (and a large transaction is refused) under
    // faults too.
    if (seed / 24) % 3 == 2 {
        limits.max_write_bytes = 6 * (4096 + 24);
    }
    DbConfig {
        limits,
        checkpoint_records: 3,
        // Half the seeds pace checkpoints (simulated ms), so that put-off checkpoints and
        // the quiet checkpoints that fold them are exercised under faults too.
        checkpoint_min_interval_ms: [0.0, 20.0][((seed / 3) % 2) as usize],
        quiet_checkpoint_bytes: 1,
        gc_retention_ms,
        history_retention_ms: HISTORY_MS[(seed % 3) as usize],
        orphan_sweep_interval_ms: 0.0,
        max_commit_attempts: 4,
        commit_budget_ms: 2_000.0,
        ..DbConfig::default()
    }
}

/// What became of a transaction the gate submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Acknowledged, at this bookmark.
    Acked(u64),
    /// The answer promised that nothing was committed (its code).
    NotCommitted(&'static str),
    /// Unknown outcome or the process died: either way is fine.
    Either,
}

/// One transaction's identity: `rows` rows with ids `txid * 10 + k` and `counter += rows`.
#[derive(Debug, Clone, Copy)]
struct Tx {
    id: u64,
    rows: u64,
    /// The round that submitted it.
    round: u32,
}

impl Tx {
    fn statements(&self) -> Vec<Statement> {
        let mut stmts: Vec<Statement> = (0..self.rows)
            .map(|k| {
                Statement::with_params(
                    "INSERT INTO item (id, tx, pad) VALUES (?, ?, randomblob(300))",
                    vec![SqlValue::Integer((self.id * 10 + k) as i64), SqlValue::Integer(self.id as i64)],
                )
            })
            .collect();
        stmts.push(Statement::with_params(
            "UPDATE counter SET n = n + ? WHERE id = 1",
            vec![SqlValue::Integer(self.rows as i64)],
        ));
        stmts
    }
}

/// What the database holds, as a read sees it.
#[derive(Debug, PartialEq, Clone)]
pub struct State {
    rows_by_tx: BTreeMap<u64, u64>,
    counter: i64,
}

/// The tables created again after the deletion. (The seed's first commit keeps its own
/// statements: the bytes it writes decide how later records split, and the regression seeds
/// must replay as they did.)
const SCHEMA_SQL: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, tx INTEGER NOT NULL, pad BLOB)",
    "CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO counter VALUES (1, 0)",
];

fn schema_statements() -> Vec<Statement> {
    SCHEMA_SQL.iter().map(|s| Statement::new(*s)).collect()
}

const READ_SQL: [&str; 2] = ["SELECT tx, count(*) FROM item GROUP BY tx ORDER BY tx", "SELECT n FROM counter WHERE id = 1"];

fn read_statements() -> Vec<Statement> {
    READ_SQL.iter().map(|s| Statement::new(*s)).collect()
}

fn int(v: &SqlValue) -> Result<i64, String> {
    match v {
        SqlValue::Integer(i) => Ok(*i),
        other => Err(format!("not an integer: {other:?}")),
    }
}

fn state_of(results: &[engine_core::StatementResult]) -> Result<State, String> {
    let rows_by_tx = results[0]
        .rows
        .iter()
        .map(|row| Ok((int(&row[0])? as u64, int(&row[1])? as u64)))
        .collect::<Result<_, String>>()?;
    Ok(State { rows_by_tx, counter: int(&results[1].rows[0][0])? })
}

/// A read the gate made, and what it must reflect.
struct ReadCheck {
    state: State,
    /// The commit the read answered from.
    bookmark: u64,
    /// Transactions acknowledged before the read began (strict), or at or before its
    /// bookmark, or more than the staleness bound before it began.
    must_include: BTreeSet<u64>,
    what: &'static str,
}

/// The seed's deletion of the database, once it is known to have happened.
#[derive(Debug, Clone, Copy)]
struct DeletionSeen {
    /// Its commit.
    seq: u64,
    /// The round that deleted.
    round: u32,
    /// When it was acknowledged (`None` when its answer was unknown and the store says it
    /// happened).
    acked_at: Option<f64>,
}

struct Model {
    attempted: BTreeMap<u64, Tx>,
    fate: BTreeMap<u64, Fate>,
    /// Acknowledged transactions with the simulated time of their acknowledgement.
    acked_at: BTreeMap<u64, f64>,
    reads: Vec<ReadCheck>,
    deletion: Option<DeletionSeen>,
}

impl Model {
    fn record(&mut self, tx: Tx, result: &Result<u64, EngineError>, crashed: bool, now: f64) -> Result<(), String> {
        if std::env::var("TWILL_TRACE").is_ok() {
            eprintln!("tx {} -> {:?}", tx.id, result);
        }
        let fate = match result {
            Ok(bookmark) => {
                self.acked_at.insert(tx.id, now);
                Fate::Acked(*bookmark)
            }
            Err(_) if crashed => Fate::Either,
            Err(EngineError::CommitUnknown(_)) => Fate::Either,
            Err(
                EngineError::Conflict { .. }
                | EngineError::TxConflict(_)
                | EngineError::Storage(_)
                | EngineError::Sql(_)
                | EngineError::Limit(_)
                | EngineError::Params(_),
            ) => Fate::NotCommitted(result.as_ref().err().map_or("", EngineError::code)),
            Err(e) => return Err(format!("tx {}: unexpected error {} ({e})", tx.id, e.code())),
        };
        self.fate.insert(tx.id, fate);
        Ok(())
    }

    /// The latest commit acknowledged at or before `t` (a transaction or the deletion): a
    /// read that must reflect everything acknowledged by then answers from it or later.
    fn latest_acked_before(&self, t: f64) -> u64 {
        let txs = self.acked_before(t).into_iter().filter_map(|id| match self.fate.get(&id) {
            Some(Fate::Acked(b)) => Some(*b),
            _ => None,
        });
        let deletion = self.deletion.filter(|d| d.acked_at.is_some_and(|at| at <= t)).map(|d| d.seq);
        txs.chain(deletion).max().unwrap_or(0)
    }

    /// Whether transaction `tx` may be in a state answered from commit `at`: not if the
    /// deletion came between them. A transaction of the deletion's own round whose answer
    /// is unknown may be on either side.
    fn deleted_by(&self, tx: u64, at: u64) -> bool {
        let Some(d) = self.deletion.filter(|d| d.seq <= at) else { return false };
        match self.fate.get(&tx) {
            Some(Fate::Acked(b)) => *b < d.seq,
            _ => self.attempted.get(&tx).is_some_and(|t| t.round < d.round),
        }
    }

    fn acked_through(&self, bookmark: u64) -> BTreeSet<u64> {
        self.fate.iter().filter_map(|(id, f)| matches!(f, Fate::Acked(b) if *b <= bookmark).then_some(*id)).collect()
    }

    fn acked_before(&self, t: f64) -> BTreeSet<u64> {
        self.acked_at.iter().filter_map(|(id, at)| (*at <= t).then_some(*id)).collect()
    }

    /// The checks every state must pass: nothing torn, nothing never attempted, nothing
    /// that was promised not to be committed, nothing the deletion took (`at` is the commit
    /// the state is from).
    fn check_state(&self, state: &State, at: u64, what: &str) -> Result<(), String> {
        let mut total = 0;
        for (tx, rows) in &state.rows_by_tx {
            let Some(attempted) = self.attempted.get(tx) else {
                return Err(format!("{what}: transaction {tx} was never attempted"));
            };
            if self.deleted_by(*tx, at) {
                return Err(format!("{what}: transaction {tx} is there in a state from after the database was deleted"));
            }
            if *rows != attempted.rows {
                return Err(format!("{what}: transaction {tx} is torn: {rows} of {} rows", attempted.rows));
            }
            if let Some(Fate::NotCommitted(code)) = self.fate.get(tx) {
                return Err(format!("{what}: transaction {tx} is there, but its answer ({code}) said nothing was committed"));
            }
            total += rows;
        }
        if state.counter != total as i64 {
            return Err(format!("{what}: counter {} disagrees with {total} rows: a transaction was half applied", state.counter));
        }
        Ok(())
    }

    fn check_final(&self, state: &State) -> Result<(), String> {
        self.check_state(state, u64::MAX, "recovery")?;
        for (tx, fate) in &self.fate {
            if matches!(fate, Fate::Acked(_)) && !self.deleted_by(*tx, u64::MAX) && !state.rows_by_tx.contains_key(tx) {
                return Err(format!("acknowledged transaction {tx} is lost"));
            }
        }
        for read in &self.reads {
            self.check_state(&read.state, read.bookmark, read.what)?;
            let mut missing = read.must_include.iter().filter(|tx| !self.deleted_by(**tx, read.bookmark));
            if let Some(missing) = missing.find(|tx| !read.state.rows_by_tx.contains_key(tx)) {
                return Err(format!("a {} read missed transaction {missing}, acknowledged before it began", read.what));
            }
        }
        Ok(())
    }
}

/// What one replica does in a round.
enum Op {
    /// One transaction.
    Transact(Tx),
    /// Several transactions committed together (group commit).
    Group(Vec<Tx>),
    /// A Hrana-style batch: BEGIN, the statements each conditioned on the one before,
    /// COMMIT, ROLLBACK unless the COMMIT succeeded; one all-or-nothing unit.
    Batch(Tx),
    /// An interactive transaction: its inserts on this replica, its counter update and
    /// COMMIT on another replica (`to`), carried as a log between them.
    Interactive { tx: Tx, to: usize },
    Read(ReadFrom),
    /// The database deleted (once a seed, in half the seeds).
    Delete(DeleteMode),
    /// The tables created again after the deletion (until that is acknowledged).
    Schema,
}

/// The outcome of one replica's op in a round.
enum Done1 {
    Tx(Vec<(Tx, Result<u64, EngineError>)>),
    Read { kind: ReadFrom, began: f64, result: Result<(State, u64), EngineError> },
    Deleted(Result<u64, EngineError>),
    Schema(Result<(), EngineError>),
}

fn script_of(tx: &Tx) -> Script {
    let stmts = tx.statements();
    let mut steps = vec![Step::always(Action::Execute(Statement::new("BEGIN")))];
    for (i, s) in stmts.into_iter().enumerate() {
        steps.push(Step { condition: Some(Cond::Ok(i)), action: Action::Execute(s) });
    }
    let last = steps.len() - 1;
    steps.push(Step { condition: Some(Cond::Ok(last)), action: Action::Execute(Statement::new("COMMIT")) });
    steps.push(Step {
        condition: Some(Cond::Not(Box::new(Cond::Ok(last + 1)))),
        action: Action::Execute(Statement::new("ROLLBACK")),
    });
    Script { atomic_units: vec![0..steps.len()], steps, ..Script::default() }
}

/// A script's commit outcome: a failed step (or a step undone) means nothing committed.
fn script_result(done: Result<Done, EngineError>) -> Result<u64, EngineError> {
    let done = done?;
    let Reply::Script(outcome) = &done.reply else { return Err(EngineError::Internal("reply kind".into())) };
    if let Some(e) = &outcome.resume_failed {
        return Err(e.clone());
    }
    match outcome.steps.iter().find_map(|s| match s {
        StepOutcome::Failed(e) | StepOutcome::Undone(e) => Some(e.clone()),
        _ => None,
    }) {
        // A failed COMMIT (or any failed step) means the batch did not commit.
        Some(e) => Err(e),
        None => Ok(done.stats.bookmark),
    }
}

async fn run_op(db: &mut Database, op: &Op, began: f64, carried: &mut Option<(Tx, TxLog)>) -> Done1 {
    match op {
        Op::Transact(tx) => {
            let r = db.transact(&tx.statements()).await.map(|r| r.stats.bookmark);
            Done1::Tx(vec![(*tx, r)])
        }
        Op::Group(txs) => {
            let results = db.transact_group(txs.iter().map(Tx::statements).collect()).await;
            Done1::Tx(txs.iter().copied().zip(results.into_iter().map(|r| r.map(|r| r.stats.bookmark))).collect())
        }
        Op::Batch(tx) => {
            let request = Request { work: Work::Script(script_of(tx)), read_from: ReadFrom::Latest };
            let done = db.perform(vec![request]).await.pop().unwrap_or_else(|| Err(EngineError::Internal("no reply".into())));
            Done1::Tx(vec![(*tx, script_result(done))])
        }
        Op::Interactive { tx, .. } => {
            // First half: BEGIN and the inserts (not the counter update), left open and carried.
            let mut stmts = tx.statements();
            stmts.pop();
            let mut steps = vec![Step::always(Action::Execute(Statement::new("BEGIN")))];
            steps.extend(stmts.into_iter().map(|s| Step::always(Action::Execute(s))));
            let script = Script { steps, open_at_end: OpenAtEnd::Carry, ..Script::default() };
            let request = Request { work: Work::Script(script), read_from: ReadFrom::Latest };
            let done = db.perform(vec![request]).await.pop().unwrap_or_else(|| Err(EngineError::Internal("no reply".into())));
            let result = match done {
                Ok(d) => match d.reply {
                    Reply::Script(outcome) => match (outcome.carried, outcome.resume_failed) {
                        (Some(log), None) => {
                            *carried = Some((*tx, log));
                            return Done1::Tx(Vec::new());
                        }
                        (_, Some(e)) => Err(e),
                        (None, None) => Err(EngineError::Internal("an open transaction was not carried".into())),
                    },
                    _ => Err(EngineError::Internal("reply kind".into())),
                },
                Err(e) => Err(e),
            };
            Done1::Tx(vec![(*tx, result)])
        }
        Op::Read(kind) => {
            let request = Request { work: Work::Transaction(read_statements()), read_from: *kind };
            let done = db.perform(vec![request]).await.pop().unwrap_or_else(|| Err(EngineError::Internal("no reply".into())));
            let result = done.and_then(|d| match d.reply {
                Reply::Transaction(results) => {
                    state_of(&results).map(|s| (s, d.stats.bookmark)).map_err(EngineError::Internal)
                }
                _ => Err(EngineError::Internal("reply kind".into())),
            });
            Done1::Read { kind: *kind, began, result }
        }
        Op::Delete(mode) => {
            let result = db.delete(*mode).await.map(|d| d.bookmark.0);
            if std::env::var("TWILL_TRACE").is_ok() {
                eprintln!("deletion -> {result:?}");
            }
            Done1::Deleted(result)
        }
        Op::Schema => Done1::Schema(db.transact(&schema_statements()).await.map(|_| ())),
    }
}

/// The second half of an interactive transaction, on another replica: the counter update
/// and COMMIT, after replaying the first half.
async fn finish_interactive(db: &mut Database, tx: Tx, log: TxLog) -> Result<u64, EngineError> {
    let counter = tx.statements().pop().expect("the counter update");
    let steps = vec![Step::always(Action::Execute(counter)), Step::always(Action::Execute(Statement::new("COMMIT")))];
    let seen = log.seen_seq;
    let script = Script { steps, resume: Some(log), open_at_end: OpenAtEnd::Carry, ..Script::default() };
    let request = Request { work: Work::Script(script), read_from: ReadFrom::AtLeast(seen) };
    let done = db.perform(vec![request]).await.pop().unwrap_or_else(|| Err(EngineError::Internal("no reply".into())));
    script_result(done)
}

fn open(store: &Rc<MemStore>, host: &Arc<SimHost>, seed: u64, cache_bytes: usize) -> Result<Database, EngineError> {
    let store: Rc<dyn engine_core::ObjectStore> = store.clone();
    let ctx = DbContext::new(store)
        .with_cache(Arc::new(PageCache::new(cache_bytes)))
        .with_host(host.clone())
        .with_sleeper(engine_core::dst::sleeper(host));
    block_on(Database::open(ctx, Layout::new("", "gate"), config(seed)))
}

/// Whether `e` is a bug: an error that no injected fault or crash excuses.
fn is_bug(e: &EngineError, crashed: bool) -> bool {
    !crashed && matches!(e, EngineError::Internal(_) | EngineError::Corrupt(_))
}

/// Runs a maintenance step (a quiet checkpoint, a scheduled sweep) on replica `r` if it is
/// up. A crash drops the replica (its memory is gone with the process); a bug fails the seed.
fn maintain(
    replicas: &mut [Option<Database>],
    r: usize,
    store: &MemStore,
    what: &str,
    step: impl FnOnce(&mut Database) -> Result<(), EngineError>,
) -> Result<(), String> {
    let Some(db) = replicas[r].as_mut() else { return Ok(()) };
    let result = step(db);
    if store.crashed() {
        replicas[r] = None;
        store.restart();
    } else if let Some(e) = result.as_ref().err().filter(|e| is_bug(e, false)) {
        return Err(format!("{what} failed: {e}"));
    }
    Ok(())
}

/// Whether the deletion (of round `round`) whose answer was unknown happened. Asks a new
/// replica (opening and reading can fail under faults: it tries again).
fn deletion_in_store(store: &Rc<MemStore>, host: &Arc<SimHost>, seed: u64, round: u32) -> Result<Option<DeletionSeen>, String> {
    let mut last = String::new();
    for _ in 0..30 {
        let info = open(store, host, seed, 64 << 10).and_then(|mut db| block_on(db.info()));
        match info {
            Ok(info) => return Ok(info.deleted.map(|d| DeletionSeen { seq: d.bookmark.0, round, acked_at: None })),
            Err(e) if is_bug(&e, store.crashed()) => {
                return Err(format!("reading whether the database is deleted: {e}"));
            }
            Err(e) => last = e.to_string(),
        }
        if store.crashed() {
            store.restart();
        }
    }
    Err(format!("cannot learn whether the database is deleted: {last}"))
}

/// The seeded fault schedule of the random sweep.
pub fn seeded_faults(seed: u64) -> Box<dyn FaultInjector> {
    Box::new(SeededFaults::new(seed ^ 0x5EED, 0.04, 0.04, 0.02).with_delay(0.2))
}

/// One store operation in this many stalls (in the seeds that get stalls).
const STALL_ONE_IN: u64 = 150;

/// Stalls: while an operation is in flight the clock jumps (an isolate paused, a slow
/// network), by amounts on either side of the bounds the engine's time arguments rest on:
/// a quarter of the GC retention window, just under and just over half of it (a probe's
/// GET and HEAD count as one observation only within half), just over the window (GC may
/// then collect what a checkpoint retired) and several windows. Other replicas' operations
/// run during the stall when the operation is also delayed. Given to the seeds whose
/// probes issue their GET and HEAD at once, so that GC really collects there and a probe
/// or a fence check may straddle a collection; other seeds keep what they had.
struct Stalls {
    inner: Box<dyn FaultInjector>,
    host: Arc<SimHost>,
    rng: SplitMix64,
    window_ms: f64,
}

impl FaultInjector for Stalls {
    fn decide(&mut self, op: engine_core::mem_store::OpKind, key: &str) -> engine_core::mem_store::Fault {
        if self.rng.below(STALL_ONE_IN) == 0 {
            let w = self.window_ms;
            let amounts = [w / 4.0, w / 2.0 - 2.0, w / 2.0 + 2.0, w + 2.0, 3.0 * w];
            self.host.advance(amounts[self.rng.below(amounts.len() as u64) as usize]);
        }
        self.inner.decide(op, key)
    }
}

/// `TWILL_TRACE_STORE=1`: every store operation printed with the simulated time and its fault.
struct TracedStore {
    inner: Box<dyn FaultInjector>,
    host: Arc<SimHost>,
}

impl FaultInjector for TracedStore {
    fn decide(&mut self, op: engine_core::mem_store::OpKind, key: &str) -> engine_core::mem_store::Fault {
        let fault = self.inner.decide(op, key);
        eprintln!("  store {:.1} {op:?} {key} {fault:?}", self.host.peek_ms());
        fault
    }
}

/// Runs one seed with the given fault schedule; returns the first violation.
pub fn run_seed(seed: u64, faults: impl Fn(u64) -> Box<dyn FaultInjector>) -> Result<(), String> {
    let store = Rc::new(MemStore::new());
    let host = Arc::new(SimHost::new(seed));
    let faults = |seed: u64| -> Box<dyn FaultInjector> {
        let cfg = config(seed);
        let window_ms = cfg.gc_retention_ms.max(cfg.history_retention_ms);
        let faults = if cfg.gc_retention_ms < engine_core::database::MIN_RETENTION_FOR_CONCURRENT_PROBE_MS {
            faults(seed)
        } else {
            // Its own sequence, so that the other choices of a seed stay what they were.
            Box::new(Stalls { inner: faults(seed), host: host.clone(), rng: SplitMix64(seed ^ 0x5354_414c_4c53), window_ms })
        };
        match std::env::var("TWILL_TRACE_STORE") {
            Ok(_) => Box::new(TracedStore { inner: faults, host: host.clone() }),
            Err(_) => faults,
        }
    };
    {
        let mut db = open(&store, &host, seed, 1 << 20).map_err(|e| e.to_string())?;
        block_on(db.transact(&[
            Statement::new("CREATE TABLE item (id INTEGER PRIMARY KEY, tx INTEGER NOT NULL, pad BLOB)"),
            Statement::new("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"),
            Statement::new("INSERT INTO counter VALUES (1, 0)"),
        ]))
        .map_err(|e| e.to_string())?;
    }
    let mut rng = SplitMix64(seed);
    // Its own sequence, so that the other choices of a seed stay what they were.
    let mut quiet_rng = SplitMix64(seed ^ 0x5157_4945_5443_4b50);
    store.set_faults(Some(faults(seed)));
    let mut replicas: Vec<Option<Database>> = (0..REPLICAS).map(|_| None).collect();
    let mut model =
        Model { attempted: BTreeMap::new(), fate: BTreeMap::new(), acked_at: BTreeMap::new(), reads: Vec::new(), deletion: None };
    // The deletion's choices and the sweeps after it: a sequence of their own again.
    let mut deletion_rng = SplitMix64(seed ^ 0x4445_4c45_5445);
    let mut deletion_pending = match deletion_rng.below(4) {
        0 => Some(DeleteMode::Purge),
        1 => Some(DeleteMode::KeepHistory),
        _ => None,
    };
    let mut deletion_round = 0;
    let mut deletion_unknown = false;
    let mut needs_schema = false;
    let mut next_tx = 0;
    let mut failed_opens = 0;
    let mut rounds: u32 = 0;
    let new_tx = |rng: &mut SplitMix64, next_tx: &mut u64, model: &mut Model, round: u32| {
        *next_tx += 1;
        let tx = Tx { id: *next_tx, rows: 1 + rng.below(3), round };
        model.attempted.insert(tx.id, tx);
        tx
    };
    while next_tx < TRANSACTIONS {
        rounds += 1;
        if rounds > 200 {
            return Err("the gate made no progress in 200 rounds".into());
        }
        if deletion_unknown {
            model.deletion = deletion_in_store(&store, &host, seed, deletion_round)?;
            needs_schema = model.deletion.is_some();
            deletion_unknown = false;
        }
        let mut schema_asked = false;
        let mut order: Vec<usize> = (0..REPLICAS).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        order.truncate(1 + rng.below(REPLICAS as u64) as usize);
        let mut ops: Vec<(usize, Op)> = Vec::new();
        for &r in &order {
            if replicas[r].is_none() {
                // (Re)start this replica with a small cache (lazy reads, evictions);
                // opening can fail or crash too.
                match open(&store, &host, seed, 64 << 10) {
                    Ok(db) => {
                        replicas[r] = Some(db);
                        failed_opens = 0;
                    }
                    Err(e) if is_bug(&e, store.crashed()) => {
                        return Err(format!("opening failed: {e}"));
                    }
                    Err(e) => {
                        if store.crashed() {
                            store.restart();
                        }
                        failed_opens += 1;
                        if failed_opens > 30 {
                            return Err(format!("the database cannot be opened: {e}"));
                        }
                        continue;
                    }
                }
            }
            let deleting_now = next_tx >= TRANSACTIONS / 2;
            let op = match rng.below(10) {
                _ if deleting_now && deletion_pending.is_some() => {
                    deletion_round = rounds;
                    Op::Delete(deletion_pending.take().expect("a deletion pending"))
                }
                _ if needs_schema && !schema_asked => {
                    schema_asked = true;
                    Op::Schema
                }
                0..=2 => Op::Transact(new_tx(&mut rng, &mut next_tx, &mut model, rounds)),
                3 => Op::Group((0..2 + rng.below(3)).map(|_| new_tx(&mut rng, &mut next_tx, &mut model, rounds)).collect()),
                4 => Op::Batch(new_tx(&mut rng, &mut next_tx, &mut model, rounds)),
                5 => Op::Interactive { tx: new_tx(&mut rng, &mut next_tx, &mut model, rounds), to: (r + 1) % REPLICAS },
                6 | 7 => Op::Read(ReadFrom::Latest),
                8 => {
                    let acked: Vec<u64> =
                        model.fate.values().filter_map(|f| if let Fate::Acked(b) = f { Some(*b) } else { None }).collect();
                    match acked.is_empty() {
                        true => Op::Read(ReadFrom::Latest),
                        false => Op::Read(ReadFrom::AtLeast(acked[rng.below(acked.len() as u64) as usize])),
                    }
                }
                _ => Op::Read(ReadFrom::WithinMs(STALENESS_MS)),
            };
            if std::env::var("TWILL_TRACE").is_ok() {
                let kind = match &op {
                    Op::Transact(t) => format!("transact {}", t.id),
                    Op::Group(ts) => format!("group {:?}", ts.iter().map(|t| t.id).collect::<Vec<_>>()),
                    Op::Batch(t) => format!("batch {}", t.id),
                    Op::Interactive { tx, to } => format!("interactive {} -> replica {to}", tx.id),
                    Op::Read(k) => format!("read {k:?}"),
                    Op::Delete(mode) => format!("delete {mode:?}"),
                    Op::Schema => "create the tables again".into(),
                };
                eprintln!("round {rounds}: replica {r}: {kind}");
            }
            ops.push((r, op));
        }
        let began = host.peek_ms();
        let mut carried: Vec<Option<(Tx, TxLog)>> = (0..REPLICAS).map(|_| None).collect();
        let runs = replicas.iter_mut().zip(carried.iter_mut()).enumerate().filter_map(|(r, (db, carry))| {
            let (_, op) = ops.iter().find(|o| o.0 == r)?;
            let db = db.as_mut()?;
            Some(run_op(db, op, began, carry))
        });
        let outcomes = block_on(futures::future::join_all(runs));
        let crashed = store.crashed();
        let now = host.peek_ms();
        for outcome in outcomes {
            match outcome {
                Done1::Tx(results) => {
                    for (tx, r) in results {
                        model.record(tx, &r, crashed, now)?;
                    }
                }
                Done1::Read { kind, began, result } => match result {
                    Ok((state, bookmark)) => {
                        let (must_include, at_least, what) = match kind {
                            ReadFrom::Latest => (model.acked_before(began), model.latest_acked_before(began), "strict"),
                            ReadFrom::AtLeast(b) => (model.acked_through(b), b, "bookmark"),
                            ReadFrom::WithinMs(ms) => {
                                (model.acked_before(began - ms), model.latest_acked_before(began - ms), "staleness-bounded")
                            }
                        };
                        if bookmark < at_least {
                            return Err(format!("a {what} read answered from commit {bookmark}, before commit {at_least}"));
                        }
                        model.check_state(&state, bookmark, "a read")?;
                        model.reads.push(ReadCheck { state, bookmark, must_include, what });
                    }
                    Err(e) if is_bug(&e, crashed) => {
                        return Err(format!("a read failed: {e}"));
                    }
                    Err(_) => {}
                },
                Done1::Deleted(result) => match result {
                    Ok(seq) => {
                        model.deletion = Some(DeletionSeen { seq, round: rounds, acked_at: Some(now) });
                        needs_schema = true;
                    }
                    Err(_) if crashed => deletion_unknown = true,
                    Err(EngineError::CommitUnknown(_)) => deletion_unknown = true,
                    // Refused: it must not have happened, which the transactions' checks see.
                    Err(EngineError::Conflict { .. } | EngineError::Storage(_)) => {}
                    Err(e) => return Err(format!("the deletion failed: {} ({e})", e.code())),
                },
                Done1::Schema(result) => match result {
                    Ok(()) => needs_schema = false,
                    Err(e) if is_bug(&e, crashed) => {
                        return Err(format!("creating the tables again failed: {e}"));
                    }
                    Err(_) => {}
                },
            }
        }
        if crashed {
            // The process hosting this round's replicas died: their memory is gone, R2
            // keeps what it has; their carried transactions die with them.
            for (r, op) in &ops {
                replicas[*r] = None;
                if let Op::Interactive { tx, .. } = op {
                    model.fate.entry(tx.id).or_insert(Fate::Either);
                }
            }
            store.restart();
            continue;
        }
        // Interactive transactions continue on another replica in the same round's wake.
        for (from, carry) in carried.into_iter().enumerate() {
            let Some((tx, log)) = carry else { continue };
            let to = ops.iter().find_map(|(r, op)| match op {
                Op::Interactive { tx: t, to } if *r == from && t.id == tx.id => Some(*to),
                _ => None,
            });
            let to = to.unwrap_or((from + 1) % REPLICAS);
            let result = match replicas[to].as_mut() {
                Some(db) => block_on(finish_interactive(db, tx, log)),
                // The next isolate is not up: the transaction is abandoned (never committed).
                None => Err(EngineError::TxConflict("no isolate took the transaction on".into())),
            };
            let crashed = store.crashed();
            model.record(tx, &result, crashed, host.peek_ms())?;
            if crashed {
                replicas[to] = None;
                store.restart();
            }
        }
        // A replica whose writer went quiet folds its log tail (the Worker does this after
        // answering, in `waitUntil`).
        if quiet_rng.below(4) == 0 {
            let r = quiet_rng.below(REPLICAS as u64) as usize;
            maintain(&mut replicas, r, &store, "a quiet checkpoint", |db| block_on(db.checkpoint_if_quiet()).map(|_| ()))?;
        }
        // After the deletion, the scheduled sweeps now and then: the purge's log records once
        // the GC window has passed, and a kept deletion's purge once its history window has.
        if model.deletion.is_some() && deletion_rng.below(3) == 0 {
            let r = deletion_rng.below(REPLICAS as u64) as usize;
            maintain(&mut replicas, r, &store, "a scheduled sweep", |db| {
                block_on(db.sweep_purged_log())?;
                if !store.crashed() {
                    block_on(db.expire_deletion())?;
                }
                Ok(())
            })?;
        }
        // Occasionally a replica is simply dropped (isolate evicted).
        if rng.below(10) == 0 {
            replicas[rng.below(REPLICAS as u64) as usize] = None;
        }
    }

    // Recovery, with the faults gone.
    store.set_faults(None);
    store.restart();
    if deletion_unknown {
        model.deletion = deletion_in_store(&store, &host, seed, deletion_round)?;
    }
    let mut fresh = open(&store, &host, seed, 64 << 10).map_err(|e| format!("recovery failed: {e}"))?;
    if model.deletion.is_some() {
        block_on(fresh.transact(&schema_statements())).map_err(|e| format!("creating the tables again failed: {e}"))?;
    }
    let read = |db: &mut Database| -> Result<State, String> {
        let r = block_on(db.transact(&read_statements())).map_err(|e| e.to_string())?;
        state_of(&r.results)
    };
    let state = read(&mut fresh)?;
    model.check_final(&state)?;
    for (i, replica) in replicas.iter_mut().enumerate() {
        if let Some(db) = replica {
            let seen = read(db).map_err(|e| format!("replica {i}: {e}"))?;
            if seen != state {
                return Err(format!("replica {i} disagrees with recovery: {seen:?} vs {state:?}"));
            }
        }
    }
    Ok(())
}
