//! The database as turso_core sees it inside one isolate: in-memory files, one connection,
//! WAL auto-checkpoints off (the engine owns all WAL bookkeeping). This layer runs SQL and
//! moves WAL frames in and out; it knows nothing about the object store.

mod statements;
mod wal;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;
use turso_core::Connection;

use crate::cache::PageCache;
use crate::chunk_file::{CheckpointView, ChunkFile, PageSource, PinnedPages, WantedPages};
use crate::error::{sql_err, EngineError};
use crate::host::Host;
use crate::io::EngineIo;
use crate::unsupported::UnsupportedFeature;
use statements::PreparedStatements;
use wal::wal_bytes;

pub(crate) use statements::is_blank_sql;
pub use wal::WalIndex;

/// turso's own cache of parsed pages, on top of the engine's page cache, as a database opens.
/// turso's default on wasm is 100,000 pages (400 MB at 4 KiB), above the isolate's 128 MB: a
/// scan of a large database kept every page it read. 2,000 pages is turso's native default,
/// the size every native test and the crash gate run with. A host with many databases open
/// at once gives each less ([`LocalDb::fit_parsed_pages`]).
pub const PARSED_PAGES_AT_OPEN: u32 = 2000;

/// VM steps between two looks at the request's budget.
const PROGRESS_INTERVAL: u64 = 10_000;

/// Distinct turso paths per open: turso keeps one `Database` per path process-wide.
static NEXT_OPEN_ID: AtomicU64 = AtomicU64::new(1);

/// Bounds on what one statement may produce or do.
#[derive(Debug, Clone, Copy)]
pub struct ExecLimits {
    /// Result rows of one statement.
    pub max_result_rows: usize,
    /// Approximate bytes of one statement's result (sum of value sizes).
    pub max_result_bytes: usize,
    /// VDBE steps one request (all of its statements) may take before it is interrupted:
    /// the CPU budget that stops runaway queries. (Workers' clocks do not advance while
    /// code runs, so work, not time, is what can be counted.)
    pub max_vm_steps: u64,
    /// Bytes of WAL (pages and their frame headers) one request may write
    /// (`WRITE_SIZE`): what it writes stays in the isolate's memory until it is shipped, and
    /// shipping copies it twice more.
    pub max_write_bytes: u64,
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits { max_result_rows: 100_000, max_result_bytes: 16 << 20, max_vm_steps: 10_000_000, max_write_bytes: 8 << 20 }
    }
}

/// The local database's file (a checkpoint read through the cache) and what its reads miss.
#[derive(Clone)]
struct Base {
    wanted: WantedPages,
    pinned: PinnedPages,
    file: Arc<ChunkFile>,
}

pub struct LocalDb {
    io: Arc<EngineIo>,
    base: Base,
    // Field order matters: kept statements, then the connection, drop before the database.
    prepared: PreparedStatements,
    conn: Arc<Connection>,
    db: Arc<turso_core::Database>,
    path: String,
    /// WAL frames that are durable (came from, or were shipped to, the commit log).
    durable_frames: u64,
    page_size: u32,
    /// VM steps the request in progress may still take; turso's progress handler counts
    /// it down while statements run and interrupts them when it is spent.
    vm_steps_left: Arc<AtomicI64>,
    /// The capacity of turso's cache of parsed pages.
    parsed_pages: std::cell::Cell<u32>,
    /// Applied frames changed the schema, but turso could not read it again (its pages
    /// were not cached), and a failed read leaves the connection with an empty schema: no
    /// statement may be prepared until [`Self::catch_up_schema`] has read it.
    schema_behind: std::cell::Cell<bool>,
}

/// Rounds of page fetches [`LocalDb::catch_up_schema`] may take (each fetches the page
/// groups of every page the last attempt missed).
const SCHEMA_FETCH_ROUNDS: usize = 64;

impl LocalDb {
    /// A database whose file is the checkpoint `view` (empty if it has no pages) and whose
    /// WAL is empty. Fails with [`EngineError::PagesMissing`] if turso needs pages that are
    /// not cached yet: fetch them and call again with them in `pinned` (held outside the
    /// cache budget until [`Self::clear_pins`], so a schema larger than the cache opens).
    pub fn create(
        view: CheckpointView,
        cache: Arc<PageCache>,
        host: Arc<dyn Host>,
        pinned: FxHashMap<u32, Arc<[u8]>>,
    ) -> Result<Self, EngineError> {
        let io = Arc::new(EngineIo::new(host));
        let wanted: WantedPages = Arc::new(Mutex::new(Default::default()));
        let pinned: PinnedPages = Arc::new(Mutex::new(pinned));
        let file = Arc::new(ChunkFile::new(view, cache, wanted.clone(), pinned.clone(), io.stalled_reads()));
        let base = Base { wanted, pinned, file };
        let path = format!("twill-{}.db", NEXT_OPEN_ID.fetch_add(1, Ordering::Relaxed));
        io.register(&path, base.file.clone());
        Self::open_at(io, base, path, 0)
    }

    fn open_at(io: Arc<EngineIo>, base: Base, path: String, durable_frames: u64) -> Result<Self, EngineError> {
        let opened = turso_core::Database::open_file(io.clone(), &path, Arc::new(turso_core::SqliteDialect))
            .and_then(|db| db.connect().map(|conn| (db, conn)));
        let (db, conn) = match opened {
            Ok(x) => x,
            Err(e) => return Err(missing_or(&base.wanted, open_error(e))),
        };
        conn.wal_auto_actions_disable();
        // What `PRAGMA cache_size = N` does for a positive N, without parsing and running a
        // statement at every open (a cold isolate pays for each statement's first run).
        conn.set_cache_size(PARSED_PAGES_AT_OPEN as i32);
        if let Err(e) = conn.get_pager().change_page_cache_size(PARSED_PAGES_AT_OPEN as usize) {
            return Err(missing_or(&base.wanted, EngineError::Internal(format!("set turso's page cache size: {e}"))));
        }
        let mut local = LocalDb {
            io,
            base,
            prepared: PreparedStatements::default(),
            conn,
            db,
            path,
            durable_frames,
            page_size: 4096,
            vm_steps_left: Arc::new(AtomicI64::new(i64::MAX)),
            parsed_pages: std::cell::Cell::new(PARSED_PAGES_AT_OPEN),
            schema_behind: std::cell::Cell::new(false),
        };
        let budget = local.vm_steps_left.clone();
        local.conn.set_progress_handler(
            PROGRESS_INTERVAL,
            Some(Box::new(move || budget.fetch_sub(PROGRESS_INTERVAL as i64, Ordering::Relaxed) <= PROGRESS_INTERVAL as i64)),
        );
        // turso took it at open from the WAL, else the file's header, as `PRAGMA page_size`
        // would answer.
        local.page_size = local.conn.get_page_size().get();
        Ok(local)
    }

    /// Makes turso's cache of parsed pages hold at most `pages` pages (evicting the least
    /// recently used), unless it already does. Not inside a transaction, whose dirty pages
    /// cannot be evicted: outside one every cached page is clean, so the resize completes.
    /// The next call after the transaction ends applies it.
    pub fn fit_parsed_pages(&self, pages: u32) {
        let pages = pages.max(1);
        if pages == self.parsed_pages.get() || self.in_transaction() {
            return;
        }
        if self.conn.get_pager().change_page_cache_size(pages as usize).is_ok() {
            // What `PRAGMA cache_size` answers (turso prepares kept statements again after it).
            self.conn.set_cache_size(pages as i32);
            self.parsed_pages.set(pages);
        }
    }

    /// The capacity of turso's cache of parsed pages.
    pub fn parsed_pages(&self) -> u32 {
        self.parsed_pages.get()
    }

    /// `e`, unless pages were missing, in which case the (real) cause is that.
    pub fn missing_or(&self, e: EngineError) -> EngineError {
        missing_or(&self.base.wanted, e)
    }

    fn has_wanted(&self) -> bool {
        !self.base.wanted.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Pages turso asked for that were not cached, since the last call.
    pub fn take_wanted(&self) -> Vec<u32> {
        std::mem::take(&mut *self.base.wanted.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect()
    }

    /// Holds a fetched page for this database outside the cache budget until
    /// [`Self::clear_pins`], so one transaction always makes progress however small the
    /// cache is.
    pub fn pin(&self, page_no: u32, page: Arc<[u8]>) {
        self.base.pinned.lock().unwrap_or_else(|p| p.into_inner()).insert(page_no, page);
    }

    pub fn clear_pins(&self) {
        self.base.pinned.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The root pages of the tables and indexes the connection knows, lowest first (from
    /// turso's parsed schema: no page is read).
    pub fn root_pages(&self) -> Vec<u32> {
        let schema = self.conn.current_schema();
        let tables = schema.tables.values().filter_map(|t| t.get_root_page().ok());
        let indexes = schema.indexes.values().flatten().map(|i| i.root_page);
        let mut roots: Vec<u32> = tables.chain(indexes).filter_map(|r| u32::try_from(r).ok()).filter(|r| *r > 0).collect();
        roots.sort_unstable();
        roots.dedup();
        roots
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    pub fn durable_frames(&self) -> u64 {
        self.durable_frames
    }

    pub fn in_transaction(&self) -> bool {
        !self.conn.get_auto_commit()
    }

    /// From now on a transaction may dirty at most `max_bytes` of pages, and turso may
    /// write at most `max_bytes` more of the WAL than it holds now (`None`: no bound). Both
    /// live in the isolate's memory until shipped. Past either, turso fails with
    /// SQLITE_FULL at once (not at the commit, after holding all of it) and
    /// [`Self::write_limit_hit`] says so.
    pub fn limit_writes(&self, max_bytes: Option<u64>) -> Result<(), EngineError> {
        let end = match max_bytes {
            Some(max) => Some(self.wal_bytes(self.wal_frames()?).saturating_add(max)),
            None => None,
        };
        self.io.wal_limit().set_end(end);
        self.conn.get_pager().set_max_dirty_pages(max_bytes.map(|max| max / self.page_size as u64));
        Ok(())
    }

    /// Whether turso failed at a bound [`Self::limit_writes`] set (and forgets it).
    pub fn write_limit_hit(&self) -> bool {
        let dirty = self.conn.get_pager().take_dirty_limit_hit();
        self.io.wal_limit().take_exceeded() || dirty
    }

    /// While an interactive transaction runs: SQL sees `started_ms` as "now" and draws
    /// randomness from `seed` (see [`crate::txn`]). `None` ends both.
    pub fn pin_transaction(&self, pin: Option<(f64, u64)>) {
        crate::host::pin_sql_clock(pin.map(|(ms, _)| ms));
        self.io.seed_sql_random(pin.map(|(_, seed)| seed));
    }

    /// Starts a request: its VM-step budget is shared by all of its statements, and the
    /// connection's settings are back at their defaults whatever an earlier request on
    /// this isolate set (foreign keys are enforced, as in D1; a request may turn them off
    /// for itself with `PRAGMA foreign_keys = OFF`).
    pub fn start_request(&self, limits: &ExecLimits) {
        self.pin_transaction(None);
        self.renew_vm_budget(limits);
        // Only when it changed: setting it invalidates every prepared statement.
        if !self.conn.foreign_keys_enabled() {
            self.conn.set_foreign_keys_enabled(true);
        }
        if self.conn.check_constraints_ignored() {
            self.conn.set_check_constraints_ignored(false);
        }
        if self.conn.defer_foreign_keys() {
            self.conn.set_defer_foreign_keys(false);
        }
    }

    /// Gives the statements run from now on `limits.max_vm_steps` VM steps between them.
    pub fn renew_vm_budget(&self, limits: &ExecLimits) {
        self.vm_steps_left.store(limits.max_vm_steps.min(i64::MAX as u64) as i64, Ordering::Relaxed);
    }

    /// Runs `sql` that the engine itself issues (BEGIN, COMMIT, ROLLBACK).
    pub fn exec_control(&self, sql: &str) -> Result<(), EngineError> {
        self.conn.execute(sql).map_err(sql_err)
    }

    /// Reads the schema again after [`Self::apply_frames`] could not (see `schema_behind`),
    /// fetching the pages it misses from `pages`.
    pub async fn catch_up_schema(&self, pages: &dyn PageSource) -> Result<(), EngineError> {
        for _ in 0..SCHEMA_FETCH_ROUNDS {
            if !self.schema_behind.get() {
                return Ok(());
            }
            match self.conn.maybe_reparse_schema() {
                Ok(()) => self.schema_behind.set(false),
                Err(e) => {
                    let wanted = self.take_wanted();
                    if wanted.is_empty() {
                        return Err(sql_err(e));
                    }
                    for (page_no, bytes) in pages.fetch_pages(&wanted).await? {
                        self.pin(page_no, bytes);
                    }
                }
            }
        }
        Err(EngineError::Internal(format!("reading the schema missed pages {SCHEMA_FETCH_ROUNDS} times in a row")))
    }

    /// Drops every frame that is not durable (a lost commit race, an unresolved PUT, a
    /// transaction that ended itself early) by truncating the WAL and reopening turso.
    /// If reopening needs pages that are not cached, the error carries what is needed to
    /// try again once they are fetched.
    pub fn discard_unshipped(self) -> Result<Self, (EngineError, Reopen)> {
        let durable = self.durable_frames;
        self.rewind(durable)
    }

    /// Drops the WAL frames after `keep_frames` (at least the durable ones are kept): what
    /// was committed locally since then is undone. Any open transaction is lost.
    pub fn rewind(self, keep_frames: u64) -> Result<Self, (EngineError, Reopen)> {
        let keep_frames = keep_frames.max(self.durable_frames);
        if self.conn.wal_state().map(|s| s.max_frame).unwrap_or(u64::MAX) == keep_frames && self.conn.get_auto_commit() {
            return Ok(self);
        }
        let LocalDb { io, base, prepared, conn, db, path, durable_frames, page_size, parsed_pages, .. } = self;
        drop(prepared);
        drop(conn);
        drop(db);
        let parsed_pages = parsed_pages.get();
        let reopen = Reopen { io, base, path, durable_frames, keep_frames, page_size, parsed_pages };
        if let Err(e) = reopen.truncate_wal() {
            return Err((e, reopen));
        }
        reopen.open()
    }
}

/// A local database closed for reopening (see [`LocalDb::rewind`]).
pub struct Reopen {
    io: Arc<EngineIo>,
    base: Base,
    path: String,
    durable_frames: u64,
    /// The WAL frames to keep.
    keep_frames: u64,
    page_size: u32,
    /// The capacity of turso's cache of parsed pages before.
    parsed_pages: u32,
}

impl Reopen {
    fn truncate_wal(&self) -> Result<(), EngineError> {
        if let Some(wal) = self.io.file(&format!("{}-wal", self.path)) {
            let len = wal_bytes(self.keep_frames, self.page_size);
            let c = turso_core::Completion::new_trunc(|_| {});
            let c = wal.truncate(len, c).map_err(|e| EngineError::Internal(format!("truncate wal: {e}")))?;
            self.io.wait_for_completion_ok(c)?;
        }
        Ok(())
    }

    /// Opens turso again on the same files, under a fresh path (turso keeps one
    /// `Database` per path process-wide).
    pub fn open(self) -> Result<LocalDb, (EngineError, Reopen)> {
        let Reopen { io, base, path, durable_frames, keep_frames, page_size, parsed_pages } = self;
        let wal_path = format!("{path}-wal");
        let new_path = format!("twill-{}.db", NEXT_OPEN_ID.fetch_add(1, Ordering::Relaxed));
        io.alias(&path, &new_path);
        io.alias(&wal_path, &format!("{new_path}-wal"));
        io.forget(&path);
        io.forget(&wal_path);
        let retry = |path| Reopen { io: io.clone(), base: base.clone(), path, durable_frames, keep_frames, page_size, parsed_pages };
        match LocalDb::open_at(io.clone(), base.clone(), new_path.clone(), durable_frames) {
            Ok(reopened) => match reopened.wal_frames() {
                Ok(frames) if frames == keep_frames => {
                    reopened.fit_parsed_pages(parsed_pages);
                    Ok(reopened)
                }
                Ok(frames) => Err((
                    EngineError::Internal(format!("after rewinding the WAL holds {frames} frames, expected {keep_frames}")),
                    retry(new_path),
                )),
                Err(e) => Err((e, retry(new_path))),
            },
            Err(e) => Err((e, retry(new_path))),
        }
    }

    /// Pages the failed open asked for.
    pub fn take_wanted(&self) -> Vec<u32> {
        std::mem::take(&mut *self.base.wanted.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect()
    }

    pub fn pin(&self, page_no: u32, page: Arc<[u8]>) {
        self.base.pinned.lock().unwrap_or_else(|p| p.into_inner()).insert(page_no, page);
    }
}

/// Why turso could not open a database file. A schema it cannot parse is damage to the file,
/// as SQLite reports it (SQLITE_CORRUPT, "malformed database schema"), not an internal fault;
/// a schema that uses what this database does not turn on (only an imported file can) is
/// refused as that feature is.
fn open_error(e: turso_core::LimboError) -> EngineError {
    match e {
        turso_core::LimboError::ParseError(why) => match UnsupportedFeature::refused_in(&why) {
            Some(feature) => EngineError::NotAllowed(feature.refusal()),
            None => EngineError::Corrupt(format!("malformed database schema: {why}")),
        },
        turso_core::LimboError::LexerError(why) => EngineError::Corrupt(format!("malformed database schema: {why}")),
        e => EngineError::Internal(format!("open local database: {e}")),
    }
}

/// Takes the wanted pages with it, so the next attempt reports only what it misses itself
/// (a stale entry would make every later round fetch its page group again).
fn missing_or(wanted: &WantedPages, e: EngineError) -> EngineError {
    let wanted = std::mem::take(&mut *wanted.lock().unwrap_or_else(|p| p.into_inner()));
    if wanted.is_empty() {
        e
    } else {
        EngineError::PagesMissing(wanted.into_iter().collect())
    }
}

trait WaitOk {
    fn wait_for_completion_ok(&self, c: turso_core::Completion) -> Result<(), EngineError>;
}

impl WaitOk for EngineIo {
    fn wait_for_completion_ok(&self, c: turso_core::Completion) -> Result<(), EngineError> {
        use turso_core::IO;
        self.wait_for_completion(c).map_err(|e| EngineError::Internal(format!("io: {e}")))
    }
}
