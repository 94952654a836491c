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

/// Open databases kept per isolate (their pages share one cache).
const MAX_OPEN_DATABASES: usize = 16;
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
    /// `None` while a request is running a group (it owns the database then).
    db: RefCell<Option<Option<Database>>>,
    pending: RefCell<Vec<Pending>>,
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
pub fn slot<E>(name: &str, make_store: impl FnOnce() -> Result<R2Store, E>) -> Result<Rc<DbSlot>, E> {
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
            db: RefCell::new(Some(None)),
            pending: RefCell::new(Vec::new()),
            last_used: RefCell::new(js_sys::Date::now()),
            opens: std::cell::Cell::new(0),
            quiet_checkpoint_scheduled: std::cell::Cell::new(false),
        });
        open.insert(name.to_string(), s.clone());
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
        loop {
            if let Some(answer) = reply.borrow_mut().take() {
                return answer;
            }
            let taken = self.db.borrow_mut().take();
            match taken {
                Some(db) => {
                    self.store.budget_calls(r2_calls);
                    let db = self.run_group(name, config, cache.clone(), db).await;
                    self.store.budget_calls(None);
                    *self.db.borrow_mut() = Some(db);
                }
                None => worker::Delay::from(POLL).await,
            }
        }
    }

    /// Runs every waiting request (up to [`MAX_GROUP`]) as one group.
    async fn run_group(
        &self,
        name: &str,
        config: DbConfig,
        cache: Arc<PageCache>,
        mut db: Option<Database>,
    ) -> Option<Database> {
        let group: Vec<Pending> = {
            let mut pending = self.pending.borrow_mut();
            let n = pending.len().min(MAX_GROUP);
            pending.drain(..n).collect()
        };
        if group.is_empty() {
            return db;
        }
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
        let taken = loop {
            if let Some(taken) = self.db.borrow_mut().take() {
                break taken;
            }
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
                    self.store.budget_calls(None);
                    *self.db.borrow_mut() = Some(None);
                    return Err(e);
                }
            },
        };
        let result = op(&mut db).await;
        self.note_quiet_checkpoint(name, &db);
        self.store.budget_calls(None);
        let keep = !matches!(&result, Err(e) if drops_state(e));
        *self.db.borrow_mut() = Some(keep.then_some(db));
        result.map(|t| (t, self.store.counts().since(&before)))
    }

    /// Asks for a quiet checkpoint if `db` has a log tail to fold once its writer is quiet.
    fn note_quiet_checkpoint(&self, name: &str, db: &Database) {
        if db.quiet_checkpoint_due() && !self.quiet_checkpoint_scheduled.replace(true) {
            QUIET.with(|q| q.borrow_mut().push(name.to_string()));
        }
    }

    fn state(&self) -> SlotState {
        match &*self.db.borrow() {
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
        let taken = self.db.borrow_mut().take();
        let mut db = match taken {
            Some(Some(db)) => db,
            other => {
                // Busy or closed after all: leave it as it is.
                if let Some(closed) = other {
                    *self.db.borrow_mut() = Some(closed);
                }
                return;
            }
        };
        let result = db.checkpoint_if_quiet().await;
        let keep = !matches!(&result, Err(e) if drops_state(e));
        *self.db.borrow_mut() = Some(keep.then_some(db));
    }

    /// (applied log position, checkpoint position), if open here and not busy.
    pub fn positions(&self) -> Option<(u64, u64)> {
        let db = self.db.borrow();
        db.as_ref()?.as_ref().map(|db| (db.applied_seq(), db.checkpoint_seq()))
    }
}
