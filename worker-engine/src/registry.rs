//! The databases this isolate has open: its only cache. Nothing here is authoritative; an
//! entry can be dropped at any time and is rebuilt from R2 on next use.
//!
//! Requests to one database are grouped: whoever holds the database runs every request
//! waiting at that moment as one group (each its own transaction, one log record for all:
//! group commit), then hands each its own result.
//!
//! Waiting requests poll their result on a short timer instead of awaiting a future that
//! another request completes: workerd cancels a request as hung when it waits on a promise
//! that only another request's I/O can resolve.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use engine_core::cache::PageCache;
use futures::future::LocalBoxFuture;
use engine_core::store::{CountingStore, StoreCounts};
use engine_core::host::Sleeper;
use engine_core::{Database, DbConfig, DbContext, Done, EngineError, Layout, ObjectStore, Request};
use r2_backend::R2Store;

use crate::lane::{HoldToken, Lane};

/// Open databases kept per isolate (their pages share one cache).
const MAX_OPEN_DATABASES: usize = 16;
/// turso's caches of parsed pages, all of an isolate's open databases together: 8,192 pages
/// (32 MiB at 4 KiB), besides the shared page cache. Each open database gets an equal share,
/// at most what a database opens with (2,000 pages): with 16 open, 512 each. Without a
/// share, 16 databases that each read 8 MiB took the isolate past its 128 MB.
const PARSED_PAGES_PER_ISOLATE: u32 = 8_192;

/// The share of [`PARSED_PAGES_PER_ISOLATE`] of each of `open` databases.
fn parsed_pages_each(open: usize) -> u32 {
    (PARSED_PAGES_PER_ISOLATE / open.max(1) as u32).min(engine_core::local::PARSED_PAGES_AT_OPEN)
}

/// Fits `db`'s parsed-page cache to its share now.
fn fit_to_share(db: &Database) {
    db.fit_parsed_pages(parsed_pages_each(OPEN.with(|open| open.borrow().len())));
}

/// Where an open database stands in an isolate (its stats).
#[derive(Debug, Default, Clone, Copy)]
pub struct Positions {
    pub applied_seq: u64,
    pub checkpoint_seq: u64,
    /// Log after the checkpoint, held in memory until folded.
    pub unfolded_log_bytes: u64,
}

/// Requests committed together at most.
const MAX_GROUP: usize = 64;

/// What one request gets back: its result and the R2 operations of its group.
pub type Answer = Result<(Done, StoreCounts), EngineError>;

/// How often a waiting request looks for its result.
const POLL: std::time::Duration = std::time::Duration::from_millis(1);
/// Times a quiet checkpoint waits for the writer to go quiet before it leaves the tail to
/// the commits that keep coming (their own checkpoints fold it). Well inside the 30 s a
/// Worker may run after answering.
const QUIET_ROUNDS: u32 = 8;
/// How long a quiet checkpoint waits when a request holds the database (ms).
const BUSY_RETRY_MS: f64 = 1_000.0;
/// How long a request waits for its turn on a database, and how old a hold may grow,
/// in this isolate (`TWILL_QUEUE_WAIT_MS`, `TWILL_HOLD_LIMIT_MS`).
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// A request that has waited this long gives up untouched with `DATABASE_BUSY`: a long
    /// import or restore may hold the database that long.
    pub queue_ms: f64,
    /// A hold of the database older than this is taken as stopped for good (its request is
    /// no longer polled, or its `waitUntil` was ended) and reaped; see [`crate::lane`].
    pub hold_ms: f64,
}

impl Default for Waits {
    fn default() -> Self {
        Waits { queue_ms: 30_000.0, hold_ms: 120_000.0 }
    }
}

type Reply = Rc<RefCell<Option<Answer>>>;

struct Pending {
    request: Request,
    reply: Reply,
}

/// Backoff between commit attempts waits on a Workers timer.
struct DelaySleeper;

#[async_trait::async_trait(?Send)]
impl Sleeper for DelaySleeper {
    async fn sleep(&self, ms: f64) {
        worker::Delay::from(std::time::Duration::from_micros((ms * 1000.0) as u64)).await;
    }
}

pub struct DbSlot {
    pub store: Rc<CountingStore<dyn ObjectStore>>,
    /// The database (`None`: not open here), held by whoever runs a group or an operation.
    db: RefCell<Lane<Option<Database>>>,
    pending: RefCell<Vec<Pending>>,
    /// The replies of the group now running, and its hold: answered if the hold is reaped.
    running: RefCell<Option<(HoldToken, Vec<Reply>)>>,
    waits: Waits,
    last_used: RefCell<f64>,
    /// Times this isolate opened the database (from R2).
    pub opens: std::cell::Cell<u64>,
    /// A quiet checkpoint is waiting to run (see [`DbSlot::checkpoint_when_quiet`]).
    quiet_checkpoint_scheduled: std::cell::Cell<bool>,
}

/// What the database of a slot is doing now.
enum SlotState {
    /// A request (or a quiet checkpoint) holds it.
    Busy,
    /// Not open in this isolate.
    Closed,
    /// Open and idle at this log position; `Some(ms)`: a quiet checkpoint is due after that wait.
    Idle { applied_seq: u64, quiet_checkpoint_in: Option<f64> },
}

thread_local! {
    static OPEN: RefCell<HashMap<String, Rc<DbSlot>>> = RefCell::new(HashMap::new());
    /// Databases whose writer may go quiet with a log tail to fold: the next answer of this
    /// isolate runs their quiet checkpoints in `waitUntil`.
    static QUIET: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static CACHE: RefCell<Option<Arc<PageCache>>> = const { RefCell::new(None) };
}

/// The isolate's page cache, created with `budget` bytes on first use.
pub fn cache(budget: usize) -> Arc<PageCache> {
    CACHE.with(|c| c.borrow_mut().get_or_insert_with(|| Arc::new(PageCache::new(budget))).clone())
}

pub fn existing_slot(name: &str) -> Option<Rc<DbSlot>> {
    OPEN.with(|open| open.borrow().get(name).cloned())
}

/// The slot of database `name`, made with the store `make_store` makes if it is not open yet.
pub fn slot<E>(name: &str, waits: Waits, make_store: impl FnOnce() -> Result<R2Store, E>) -> Result<Rc<DbSlot>, E> {
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        if let Some(s) = open.get(name) {
            *s.last_used.borrow_mut() = js_sys::Date::now();
            return Ok(s.clone());
        }
        let r2 = make_store()?;
        if open.len() >= MAX_OPEN_DATABASES {
            // Evict the least recently used database nobody is using right now.
            let idle = open
                .iter()
                .filter(|(_, s)| Rc::strong_count(s) == 1)
                .min_by(|a, b| a.1.last_used.borrow().total_cmp(&b.1.last_used.borrow()))
                .map(|(k, _)| k.clone());
            if let Some(k) = idle {
                open.remove(&k);
            }
        }
        let r2: Rc<dyn ObjectStore> = Rc::new(r2);
        let s = Rc::new(DbSlot {
            store: Rc::new(CountingStore::new(r2)),
            db: RefCell::new(Lane::new(None)),
            pending: RefCell::new(Vec::new()),
            running: RefCell::new(None),
            waits,
            last_used: RefCell::new(js_sys::Date::now()),
            opens: std::cell::Cell::new(0),
            quiet_checkpoint_scheduled: std::cell::Cell::new(false),
        });
        open.insert(name.to_string(), s.clone());
        // One more database: the idle ones give up part of their share now (busy ones when
        // their holder gives them back).
        let share = parsed_pages_each(open.len());
        for slot in open.values() {
            if let Some(Some(db)) = slot.db.borrow().free() {
                db.fit_parsed_pages(share);
            }
        }
        Ok(s)
    })
}

/// Runs, after the answer (`waitUntil`), the quiet checkpoints that requests of this isolate
/// found due.
pub fn schedule_quiet_checkpoints(ctx: &worker::Context) {
    for name in QUIET.with(|q| std::mem::take(&mut *q.borrow_mut())) {
        if let Some(slot) = existing_slot(&name) {
            ctx.wait_until(async move { slot.checkpoint_when_quiet().await });
        }
    }
}

/// A request that did not get its turn within [`Waits::queue_ms`].
fn busy(waits: Waits) -> EngineError {
    EngineError::Busy(format!(
        "the database was busy in this isolate for {} s (QUEUE_WAIT limit) and this request did not get its turn; \
         nothing of it ran: retry",
        waits.queue_ms / 1000.0
    ))
}

fn drops_state(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Internal(_) | EngineError::Corrupt(_) | EngineError::PagesMissing(_) | EngineError::BaseGone(_)
    )
}

impl DbSlot {
    /// Runs `request` (one transaction or one script), grouped with whatever else is waiting.
    pub async fn submit(&self, name: &str, config: DbConfig, cache: Arc<PageCache>, r2_calls: Option<u64>, request: Request) -> Answer {
        let reply: Reply = Rc::new(RefCell::new(None));
        self.pending.borrow_mut().push(Pending { request, reply: reply.clone() });
        let waiting_since = js_sys::Date::now();
        loop {
            if let Some(answer) = reply.borrow_mut().take() {
                return answer;
            }
            let now = js_sys::Date::now();
            let taken = self.db.borrow_mut().try_take(now);
            match taken {
                Some((db, token)) => {
                    self.store.budget_calls(r2_calls);
                    let db = self.run_group(name, config, cache.clone(), db, token).await;
                    self.release(token, db);
                }
                None => {
                    if now - waiting_since > self.waits.queue_ms && self.leave_queue(&reply) {
                        return Err(busy(self.waits));
                    }
                    self.reap_stuck_hold(now);
                    worker::Delay::from(POLL).await
                }
            }
        }
    }

    /// Gives the database back and ends the hold's R2 call budget, unless the hold was
    /// reaped meanwhile: then the database is dropped and the budget is the new holder's.
    fn release(&self, token: HoldToken, db: Option<Database>) {
        if let Some(db) = &db {
            fit_to_share(db);
        }
        if self.db.borrow_mut().give_back(token, db) {
            self.store.budget_calls(None);
        }
    }

    /// Takes `reply`'s request out of the queue, if no group has taken it yet.
    fn leave_queue(&self, reply: &Reply) -> bool {
        let mut pending = self.pending.borrow_mut();
        match pending.iter().position(|p| Rc::ptr_eq(&p.reply, reply)) {
            Some(i) => {
                pending.remove(i);
                true
            }
            None => false,
        }
    }

    /// Reaps a hold older than [`Waits::hold_ms`]: the lane starts over with the database
    /// closed, and the requests of the group it was running are answered that their outcome
    /// is unknown (nobody else will answer them).
    fn reap_stuck_hold(&self, now: f64) {
        let Some(reaped) = self.db.borrow_mut().reap_if_older(now, self.waits.hold_ms, || None) else { return };
        let replies = {
            let mut running = self.running.borrow_mut();
            match running.take() {
                Some((token, replies)) if token == reaped => replies,
                // The reaped hold was an operation, not a group: no replies wait on it.
                other => {
                    *running = other;
                    return;
                }
            }
        };
        for reply in replies {
            let mut reply = reply.borrow_mut();
            if reply.is_none() {
                *reply = Some(Err(EngineError::CommitUnknown(format!(
                    "the database's work in this isolate stopped making progress for over {} s (HOLD_LIMIT) with this \
                     request in it; it was not acknowledged and may or may not have committed: read to find out",
                    self.waits.hold_ms / 1000.0
                ))));
            }
        }
    }

    /// Runs every waiting request (up to [`MAX_GROUP`]) as one group.
    async fn run_group(
        &self,
        name: &str,
        config: DbConfig,
        cache: Arc<PageCache>,
        db: Option<Database>,
        token: HoldToken,
    ) -> Option<Database> {
        let group: Vec<Pending> = {
            let mut pending = self.pending.borrow_mut();
            let n = pending.len().min(MAX_GROUP);
            pending.drain(..n).collect()
        };
        if group.is_empty() {
            return db;
        }
        *self.running.borrow_mut() = Some((token, group.iter().map(|p| p.reply.clone()).collect()));
        let db = self.run_drained(name, config, cache, db, group).await;
        let mut running = self.running.borrow_mut();
        if running.as_ref().is_some_and(|(t, _)| *t == token) {
            *running = None;
        }
        db
    }

    /// Runs a group taken from the queue and answers each of its requests.
    async fn run_drained(
        &self,
        name: &str,
        config: DbConfig,
        cache: Arc<PageCache>,
        mut db: Option<Database>,
        group: Vec<Pending>,
    ) -> Option<Database> {
        let before = self.store.counts();
        if db.is_none() {
            match self.open(name, config, cache).await {
                Ok(opened) => db = Some(opened),
                Err(e) => {
                    for p in group {
                        *p.reply.borrow_mut() = Some(Err(e.clone()));
                    }
                    return None;
                }
            }
        }
        let Some(database) = db.as_mut() else { return None };
        fit_to_share(database);
        let (requests, replies): (Vec<_>, Vec<_>) = group.into_iter().map(|p| (p.request, p.reply)).unzip();
        let results = database.perform(requests).await;
        if results.iter().any(|r| matches!(r, Err(e) if drops_state(e))) {
            db = None;
        }
        if let Some(database) = &db {
            self.note_quiet_checkpoint(name, database);
        }
        let counts = self.store.counts().since(&before);
        for (result, reply) in results.into_iter().zip(replies) {
            *reply.borrow_mut() = Some(result.map(|tx| (tx, counts)));
        }
        db
    }

    async fn open(&self, name: &str, config: DbConfig, cache: Arc<PageCache>) -> Result<Database, EngineError> {
        let db = Database::open_for_waiting_requests(self.context(cache), Layout::new("", name), config).await?;
        self.opens.set(self.opens.get() + 1);
        Ok(db)
    }

    /// Opens the database for an operation other than the waiting requests' group.
    async fn open_alone(&self, name: &str, config: DbConfig, cache: Arc<PageCache>) -> Result<Database, EngineError> {
        let db = Database::open(self.context(cache), Layout::new("", name), config).await?;
        self.opens.set(self.opens.get() + 1);
        Ok(db)
    }

    fn context(&self, cache: Arc<PageCache>) -> DbContext {
        let store: Rc<dyn ObjectStore> = self.store.clone();
        DbContext { store, cache, host: engine_core::host::system(), sleeper: Rc::new(DelaySleeper) }
    }

    /// Runs `op` on the database alone (history: finding a commit, building a past state,
    /// restoring), once no group is running; requests that arrive meanwhile wait.
    pub async fn exclusive<T>(
        &self,
        name: &str,
        config: DbConfig,
        cache: Arc<PageCache>,
        r2_calls: Option<u64>,
        op: impl for<'a> FnOnce(&'a mut Database) -> LocalBoxFuture<'a, Result<T, EngineError>>,
    ) -> Result<(T, StoreCounts), EngineError> {
        let waiting_since = js_sys::Date::now();
        let (taken, token) = loop {
            let now = js_sys::Date::now();
            if let Some(taken) = self.db.borrow_mut().try_take(now) {
                break taken;
            }
            if now - waiting_since > self.waits.queue_ms {
                return Err(busy(self.waits));
            }
            self.reap_stuck_hold(now);
            worker::Delay::from(POLL).await;
        };
        let before = self.store.counts();
        self.store.budget_calls(r2_calls);
        let mut db = match taken {
            Some(db) => db,
            // Not `open`: its LIST may stand in for the freshness probe of the requests that
            // waited for the open, and an exclusive operation is not those requests (a read
            // much later would skip its probe and miss commits made in between).
            None => match self.open_alone(name, config, cache).await {
                Ok(db) => db,
                Err(e) => {
                    self.release(token, None);
                    return Err(e);
                }
            },
        };
        fit_to_share(&db);
        let result = op(&mut db).await;
        self.note_quiet_checkpoint(name, &db);
        let keep = !matches!(&result, Err(e) if drops_state(e));
        self.release(token, keep.then_some(db));
        result.map(|t| (t, self.store.counts().since(&before)))
    }

    /// Asks for a quiet checkpoint if `db` has a log tail to fold once its writer is quiet.
    fn note_quiet_checkpoint(&self, name: &str, db: &Database) {
        if db.quiet_checkpoint_due() && !self.quiet_checkpoint_scheduled.replace(true) {
            QUIET.with(|q| q.borrow_mut().push(name.to_string()));
        }
    }

    fn state(&self) -> SlotState {
        match self.db.borrow().free() {
            None => SlotState::Busy,
            Some(None) => SlotState::Closed,
            Some(Some(db)) => SlotState::Idle { applied_seq: db.applied_seq(), quiet_checkpoint_in: db.quiet_checkpoint_due().then_some(db.config().checkpoint_min_interval_ms) },
        }
    }

    /// Folds the log tail [`Database::quiet_checkpoint_due`] names once no commit has come
    /// through this isolate for a whole checkpoint interval, so that cold readers need not replay it.
    /// A commit in the meantime starts the wait again.
    async fn checkpoint_when_quiet(&self) {
        for _ in 0..QUIET_ROUNDS {
            let (seen, wait_ms) = match self.state() {
                SlotState::Closed | SlotState::Idle { quiet_checkpoint_in: None, .. } => break,
                SlotState::Busy => (None, BUSY_RETRY_MS),
                SlotState::Idle { applied_seq, quiet_checkpoint_in: Some(wait_ms) } => (Some(applied_seq), wait_ms),
            };
            worker::Delay::from(std::time::Duration::from_micros((wait_ms * 1000.0) as u64)).await;
            if let SlotState::Idle { applied_seq, quiet_checkpoint_in: Some(_) } = self.state() {
                if seen == Some(applied_seq) {
                    self.checkpoint_idle_database().await;
                    break;
                }
            }
        }
        self.quiet_checkpoint_scheduled.set(false);
    }

    /// Takes the database if it is idle and runs [`Database::checkpoint_if_quiet`] on it.
    async fn checkpoint_idle_database(&self) {
        let taken = self.db.borrow_mut().try_take(js_sys::Date::now());
        let (mut db, token) = match taken {
            Some((Some(db), token)) => (db, token),
            Some((None, token)) => {
                // Closed after all: leave it closed.
                self.db.borrow_mut().give_back(token, None);
                return;
            }
            // Busy after all.
            None => return,
        };
        let result = db.checkpoint_if_quiet().await;
        let keep = !matches!(&result, Err(e) if drops_state(e));
        self.db.borrow_mut().give_back(token, keep.then_some(db));
    }

    /// The capacity of turso's cache of parsed pages for the database, if open here and not busy.
    pub fn parsed_pages(&self) -> Option<u32> {
        self.db.borrow().free()?.as_ref()?.parsed_pages()
    }

    /// Where the database stands here, if open here and not busy.
    pub fn positions(&self) -> Option<Positions> {
        let lane = self.db.borrow();
        lane.free()?.as_ref().map(|db| Positions {
            applied_seq: db.applied_seq(),
            checkpoint_seq: db.checkpoint_seq(),
            unfolded_log_bytes: db.unfolded_log_bytes(),
        })
    }
}
