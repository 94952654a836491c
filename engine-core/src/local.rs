//! The database as turso_core sees it inside one isolate: in-memory files, one connection,
//! WAL auto-checkpoints off (the engine owns all WAL bookkeeping). This layer runs SQL and
//! moves WAL frames in and out; it knows nothing about the object store.

use std::num::NonZero;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use turso_core::{Connection, StatementStatusCounter, StepResult, Value};

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::sync::Mutex;

use crate::cache::PageCache;
use crate::chunk_file::{CheckpointView, ChunkFile, PageSource, PinnedPages, WantedPages};
use crate::error::{sql_err, EngineError, SqliteCode};
use crate::guard::Dml;
use crate::host::Host;
use crate::io::EngineIo;
use crate::log_record::Frame;
use crate::value::{Description, Params, SqlValue, Statement, StatementResult};

/// SQLite's WAL header and frame header sizes.
const WAL_HEADER_LEN: u64 = 32;
const WAL_FRAME_HEADER_LEN: usize = 24;

/// turso's own cache of parsed pages, on top of the engine's page cache, as a database opens.
/// turso's default on wasm is 100,000 pages (400 MB at 4 KiB), above the isolate's 128 MB: a
/// scan of a large database kept every page it read. 2,000 pages is turso's native default,
/// the size every native test and the crash gate run with. A host with many databases open
/// at once gives each less ([`LocalDb::fit_parsed_pages`]).
pub const PARSED_PAGES_AT_OPEN: u32 = 2000;

/// Prepared statements kept per local database, by SQL text. Applications send the same
/// few statements again and again; preparing one (parse, plan, emit) costs more than
/// running a point query. turso re-prepares a kept statement by itself when the schema or
/// a connection setting changed since it was prepared. Bounded so that an isolate's open
/// databases (16) keep a few MB of programs at most.
const STATEMENT_CACHE_ENTRIES: usize = 32;

/// Longer statements (bulk inserts with their values inline, generated SQL) are not kept:
/// they rarely repeat, and their programs grow with their text.
const MAX_KEPT_SQL_BYTES: usize = 4096;

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

/// Statements that ran to their end, reset for the next run (see [`STATEMENT_CACHE_ENTRIES`]).
#[derive(Default)]
struct PreparedStatements(Mutex<FxHashMap<String, turso_core::Statement>>);

impl PreparedStatements {
    fn take(&self, sql: &str) -> Option<turso_core::Statement> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(sql)
    }

    /// Keeps `stmt`, which ran to its end, for the next run of `sql`. A statement that
    /// failed or stopped early is never kept: resetting a write statement that returned
    /// rows part-way would finish its write.
    fn keep(&self, sql: &str, mut stmt: turso_core::Statement) {
        if sql.len() > MAX_KEPT_SQL_BYTES || stmt.reset().is_err() {
            return;
        }
        stmt.clear_bindings();
        // Its counters add up across runs; each answer reports its own run's.
        stmt.reset_metrics();
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= STATEMENT_CACHE_ENTRIES {
            // Rare (an application with many distinct statements): start over rather
            // than track recency on every hit.
            kept.clear();
        }
        kept.insert(sql.to_owned(), stmt);
    }
}

/// A statement that ran to its end, and what it returned.
struct Finished {
    result: StatementResult,
    stmt: turso_core::Statement,
}

/// One statement being stepped, and what it produced so far.
struct Stepping {
    stmt: turso_core::Statement,
    keep_rows: bool,
    rows: Vec<Vec<SqlValue>>,
    /// Approximate bytes of `rows` (sum of value sizes).
    result_bytes: usize,
    rowid_before: i64,
}

impl Stepping {
    fn new(stmt: turso_core::Statement, keep_rows: bool, rowid_before: i64) -> Self {
        Stepping { stmt, keep_rows, rows: Vec::new(), result_bytes: 0, rowid_before }
    }
}

/// Where a statement being stepped stands.
enum Progress {
    Done,
    /// It waits for pages that are not cached.
    Stalled,
}

/// Where the durable WAL holds each page ([`LocalDb::durable_wal_index`]).
#[derive(Debug)]
pub struct WalIndex {
    /// Page number → the frame (1-based) with its newest image.
    pub newest_frame: BTreeMap<u32, u64>,
    /// The database size in pages after the last durable commit (0 if the WAL is empty).
    pub db_size: u32,
}

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
            Err(e) => return Err(missing_or(&base.wanted, EngineError::Internal(format!("open local database: {e}")))),
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

    /// Reads the durable WAL's frames in order into one buffer: `visit` gets each frame's
    /// number, its page number and its page image.
    fn read_durable_frames(&self, mut visit: impl FnMut(u64, u32, &[u8])) -> Result<u32, EngineError> {
        let mut db_size = 0;
        let mut buf = vec![0u8; WAL_FRAME_HEADER_LEN + self.page_size as usize];
        for frame_no in 1..=self.durable_frames {
            let info = self.conn.wal_get_frame(frame_no, &mut buf).map_err(sql_err)?;
            visit(frame_no, info.page_no, &buf[WAL_FRAME_HEADER_LEN..]);
            if info.db_size > 0 {
                db_size = info.db_size;
            }
        }
        Ok(db_size)
    }

    /// Which durable WAL frame holds the newest image of each page, and the database size
    /// after the last durable commit; no page is kept.
    pub fn durable_wal_index(&self) -> Result<WalIndex, EngineError> {
        let mut newest_frame = BTreeMap::new();
        let db_size = self.read_durable_frames(|frame_no, page_no, _| {
            newest_frame.insert(page_no, frame_no);
        })?;
        Ok(WalIndex { newest_frame, db_size })
    }

    /// The newest image of every page in the durable WAL, and the database size in pages
    /// after the last durable commit (0 if the WAL is empty).
    pub fn durable_pages(&self) -> Result<(BTreeMap<u32, Vec<u8>>, u32), EngineError> {
        let mut pages = BTreeMap::new();
        let db_size = self.read_durable_frames(|_, page_no, page| {
            pages.insert(page_no, page.to_vec());
        })?;
        Ok((pages, db_size))
    }

    /// The database size in pages after the last durable commit (0 if the WAL is empty): the
    /// newest durable frame that ends a commit says it, so the walk back usually reads one.
    pub fn durable_db_size(&self) -> Result<u32, EngineError> {
        let mut buf = vec![0u8; WAL_FRAME_HEADER_LEN + self.page_size as usize];
        for frame_no in (1..=self.durable_frames).rev() {
            let info = self.conn.wal_get_frame(frame_no, &mut buf).map_err(sql_err)?;
            if info.db_size > 0 {
                return Ok(info.db_size);
            }
        }
        Ok(0)
    }

    /// The page image durable WAL frame `frame_no` (1-based) holds.
    pub fn frame_page(&self, frame_no: u64) -> Result<Vec<u8>, EngineError> {
        let mut buf = vec![0u8; WAL_FRAME_HEADER_LEN + self.page_size as usize];
        self.conn.wal_get_frame(frame_no, &mut buf).map_err(sql_err)?;
        buf.drain(..WAL_FRAME_HEADER_LEN);
        Ok(buf)
    }

    /// Durable WAL frames `from..=to` (1-based), as log frames.
    pub fn frames(&self, from: u64, to: u64) -> Result<Vec<Frame>, EngineError> {
        let mut frames = Vec::new();
        self.visit_frames(from, to, |page_no, db_size_after, page| {
            frames.push(Frame { page_no, db_size_after, page: page.to_vec() })
        })?;
        Ok(frames)
    }

    /// Reads WAL frames `from..=to` (1-based) in order, one buffer for all: `visit` gets
    /// each frame's page number, the database size it commits (0 if none) and its page.
    pub fn visit_frames(&self, from: u64, to: u64, mut visit: impl FnMut(u32, u32, &[u8])) -> Result<(), EngineError> {
        let mut buf = vec![0u8; WAL_FRAME_HEADER_LEN + self.page_size as usize];
        for frame_no in from..=to {
            let info = self.conn.wal_get_frame(frame_no, &mut buf).map_err(sql_err)?;
            visit(info.page_no, info.db_size, &buf[WAL_FRAME_HEADER_LEN..]);
        }
        Ok(())
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

    /// The size of a WAL of `frames` frames.
    fn wal_bytes(&self, frames: u64) -> u64 {
        wal_bytes(frames, self.page_size)
    }

    /// The bytes `frames` frames take in the WAL.
    pub fn frames_bytes(&self, frames: u64) -> u64 {
        frames * (WAL_FRAME_HEADER_LEN as u64 + self.page_size as u64)
    }

    /// WAL frames committed locally, durable or not.
    pub fn wal_frames(&self) -> Result<u64, EngineError> {
        Ok(self.conn.wal_state().map_err(sql_err)?.max_frame)
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

    /// Prepares the first statement of `sql`; returns it and where the next one starts.
    fn prepare_first(&self, sql: &str) -> Result<(turso_core::Statement, usize), EngineError> {
        let stmt = self.conn.prepare(sql).map_err(sql_err)?;
        let tail = stmt.tail_offset().min(sql.len());
        Ok((stmt, tail))
    }

    /// Prepares `sql`, which must hold exactly one statement.
    fn prepare_one(&self, sql: &str) -> Result<turso_core::Statement, EngineError> {
        let (stmt, tail) = self.prepare_first(sql)?;
        if !is_blank_sql(&sql[tail..]) {
            return Err(EngineError::sql(
                "more than one statement in one SQL string; send them as separate statements of a batch",
            ));
        }
        Ok(stmt)
    }

    /// Runs one statement (SQL text holding exactly one statement) with its parameters.
    pub async fn execute(
        &self,
        statement: &Statement,
        limits: &ExecLimits,
        pages: &dyn PageSource,
    ) -> Result<StatementResult, EngineError> {
        self.catch_up_schema(pages).await?;
        let mut stmt = match self.prepared.take(&statement.sql) {
            Some(kept) => kept,
            None => self.prepare_one(&statement.sql)?,
        };
        bind_params(&mut stmt, &statement.params)?;
        match self.run_prepared(stmt, &statement.sql, limits, true, pages).await {
            Ok(Finished { result, stmt }) => {
                self.prepared.keep(&statement.sql, stmt);
                Ok(result)
            }
            Err(e) => Err(self.refine_error(e, pages).await),
        }
    }

    /// SQLite reports a duplicate primary key as "UNIQUE constraint failed" with the
    /// extended code SQLITE_CONSTRAINT_PRIMARYKEY; turso does not tell the two apart, so
    /// look at the table's primary key.
    async fn refine_error(&self, e: EngineError, pages: &dyn PageSource) -> EngineError {
        let EngineError::Sql(mut failure) = e else { return e };
        if failure.code != SqliteCode::ConstraintUnique {
            return EngineError::Sql(failure);
        }
        let Some(columns) = failure.message.strip_prefix("UNIQUE constraint failed: ") else {
            return EngineError::Sql(failure);
        };
        let columns: Vec<(&str, &str)> = columns.split(", ").filter_map(|c| c.split_once('.')).collect();
        let Some(&(table, _)) = columns.first() else { return EngineError::Sql(failure) };
        let pk = Statement::with_params(
            "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk",
            vec![SqlValue::Text(table.to_string())],
        );
        let table_info = match self.prepare_one(&pk.sql).and_then(|mut stmt| bind_params(&mut stmt, &pk.params).map(|()| stmt)) {
            Ok(stmt) => self.run_prepared(stmt, &pk.sql, &ExecLimits::default(), true, pages).await.map(|f| f.result),
            Err(e) => Err(e),
        };
        if let Ok(r) = table_info {
            let pk_columns: Vec<&str> =
                r.rows.iter().filter_map(|row| match row.first() { Some(SqlValue::Text(t)) => Some(t.as_str()), _ => None }).collect();
            let named: Vec<&str> = columns.iter().map(|(_, c)| *c).collect();
            if !pk_columns.is_empty() && pk_columns == named {
                failure.code = SqliteCode::ConstraintPrimaryKey;
            }
        }
        EngineError::Sql(failure)
    }

    /// Runs every statement of `sql` in order, without parameters, discarding their rows.
    /// `check` vets each statement's text before it runs.
    pub async fn execute_sequence(
        &self,
        sql: &str,
        limits: &ExecLimits,
        check: impl Fn(&str) -> Result<(), EngineError>,
        pages: &dyn PageSource,
    ) -> Result<(), EngineError> {
        self.catch_up_schema(pages).await?;
        let mut rest = sql;
        while !is_blank_sql(rest) {
            // Vet the statement before turso compiles it (compiling may already act).
            let mut parser = turso_parser::parser::Parser::new(rest.as_bytes());
            if let Some(Ok(_)) = parser.next() {
                check(rest.get(..parser.offset()).unwrap_or(rest))?;
            }
            let (stmt, tail) = self.prepare_first(rest)?;
            let text = &rest[..tail];
            if stmt.parameters_count() > 0 {
                return Err(EngineError::Params("statements of a sequence cannot take parameters".into()));
            }
            self.run_prepared(stmt, text, limits, false, pages).await?;
            rest = &rest[tail..];
        }
        Ok(())
    }

    /// What a statement takes and returns, without running it.
    pub async fn describe(&self, sql: &str, pages: &dyn PageSource) -> Result<Description, EngineError> {
        self.catch_up_schema(pages).await?;
        let stmt = self.prepare_one(sql)?;
        let params = (1..=stmt.parameters_count())
            .map(|i| stmt.parameters().name(NonZero::new(i).expect("i >= 1")))
            .collect();
        let columns = (0..stmt.num_columns())
            .map(|i| (stmt.get_column_name(i).into_owned(), stmt.get_column_decltype(i)))
            .collect();
        let parsed = turso_parser::parser::Parser::new(sql.as_bytes()).next();
        Ok(Description {
            params,
            columns,
            is_explain: matches!(parsed, Some(Ok(turso_parser::ast::Cmd::Explain(_) | turso_parser::ast::Cmd::ExplainQueryPlan { .. }))),
            is_readonly: crate::guard::check_script_statement(sql)? == crate::guard::StatementKind::Read,
        })
    }

    /// Steps `stmt` to the end. A read of a page that is not cached suspends the statement
    /// where it is: the page's group is fetched from `pages`, the read completed, and the
    /// statement goes on (a scan streams through the cache in one pass, whatever its size).
    async fn run_prepared(
        &self,
        stmt: turso_core::Statement,
        sql: &str,
        limits: &ExecLimits,
        keep_rows: bool,
        pages: &dyn PageSource,
    ) -> Result<Finished, EngineError> {
        let mut run = Stepping::new(stmt, keep_rows, self.conn.last_insert_rowid());
        while let Progress::Stalled = self.advance(&mut run, limits)? {
            self.fetch_stalled(pages).await?;
        }
        Ok(self.finish(run, sql))
    }

    /// Fetches the pages that stalled reads wait for and completes those reads.
    async fn fetch_stalled(&self, pages: &dyn PageSource) -> Result<(), EngineError> {
        let wanted = self.take_wanted();
        let fetched: crate::chunk_file::FetchedPages = match pages.fetch_pages(&wanted).await {
            Ok(fetched) => fetched.into_iter().collect(),
            // The checkpoint's chunks are gone (collected after a newer checkpoint): the
            // caller moves onto the newest manifest and runs the request again.
            Err(EngineError::BaseGone(_)) => return Err(EngineError::PagesMissing(wanted)),
            Err(e) => return Err(e),
        };
        if self.base.file.complete_stalled(&fetched) == 0 {
            return Err(EngineError::Corrupt(format!("pages {wanted:?} are needed but the checkpoint does not have them")));
        }
        Ok(())
    }

    /// Steps `run` until it is done or waits for pages that are not cached.
    fn advance(&self, run: &mut Stepping, limits: &ExecLimits) -> Result<Progress, EngineError> {
        let interrupted = || {
            EngineError::Interrupted(format!(
                "query interrupted: the request used up its budget of {} VM steps (VM_STEPS limit); the statement changed nothing",
                limits.max_vm_steps
            ))
        };
        loop {
            let step = match run.stmt.step() {
                Err(_) if self.vm_steps_left.load(Ordering::Relaxed) <= 0 => return Err(interrupted()),
                other => other.map_err(sql_err)?,
            };
            match step {
                StepResult::Row if !run.keep_rows => {}
                StepResult::Row => {
                    let row = run.stmt.row().ok_or_else(|| EngineError::Internal("row missing after Row step".into()))?;
                    let values: Vec<SqlValue> = row.get_values().map(|v| from_turso(v)).collect();
                    run.result_bytes += values.iter().map(SqlValue::weight).sum::<usize>();
                    run.rows.push(values);
                    if run.rows.len() > limits.max_result_rows {
                        return Err(EngineError::Limit(format!(
                            "result has more than {} rows (RESULT_ROWS limit); add a LIMIT or page through the data",
                            limits.max_result_rows
                        )));
                    }
                    if run.result_bytes > limits.max_result_bytes {
                        return Err(EngineError::Limit(format!(
                            "result is larger than {} bytes (RESULT_BYTES limit); select fewer rows or columns",
                            limits.max_result_bytes
                        )));
                    }
                }
                StepResult::Done => return Ok(Progress::Done),
                StepResult::IO | StepResult::Yield | StepResult::Sleep { .. } => {
                    if self.base.file.has_stalled_reads() {
                        return Ok(Progress::Stalled);
                    }
                    // A read turso did not wait for failed (see `StalledReads`): what it
                    // goes on with cannot be trusted, so the request runs again.
                    if self.has_wanted() {
                        return Err(self.missing_or(EngineError::Internal("a page is not cached".into())));
                    }
                    run.stmt._io().step().map_err(sql_err)?;
                }
                StepResult::Interrupt => return Err(interrupted()),
                StepResult::Busy => return Err(EngineError::Internal("database busy".into())),
            }
        }
    }

    fn finish(&self, run: Stepping, sql: &str) -> Finished {
        let Stepping { stmt, rows, rowid_before, .. } = run;
        // Read after the run: a statement prepared before a schema change was prepared
        // again by its first step (`SELECT *` may have gained a column).
        let columns = (0..stmt.num_columns()).map(|i| stmt.get_column_name(i).into_owned()).collect();
        let decltypes = (0..stmt.num_columns()).map(|i| stmt.get_column_decltype(i)).collect();
        let dml = crate::guard::dml_of(sql);
        // SQLite's changes() counts INSERT, UPDATE and DELETE only (turso's counter also
        // moves for other statements, e.g. window functions and DROP).
        let rows_affected = if dml == Dml::Other { 0 } else { stmt.n_change().max(0) as u64 };
        let rows_read = stmt.stmt_status(StatementStatusCounter::RowsRead);
        let rows_written = stmt.stmt_status(StatementStatusCounter::RowsWritten);
        let rowid_after = self.conn.last_insert_rowid();
        let is_insert = dml == Dml::Insert;
        let result = StatementResult {
            columns,
            decltypes,
            rows,
            rows_affected,
            rows_read,
            rows_written,
            last_insert_rowid: (rowid_after != rowid_before || (rows_affected > 0 && rowid_after != 0 && is_insert))
                .then_some(rowid_after),
            connection_last_insert_rowid: rowid_after,
            is_insert,
        };
        Finished { result, stmt }
    }

    /// Runs `sql` that the engine itself issues (BEGIN, COMMIT, ROLLBACK).
    pub fn exec_control(&self, sql: &str) -> Result<(), EngineError> {
        self.conn.execute(sql).map_err(sql_err)
    }

    /// WAL frames committed locally and not yet durable.
    pub fn unshipped_frame_count(&self) -> Result<u64, EngineError> {
        Ok(self.wal_frames()?.saturating_sub(self.durable_frames))
    }

    /// The first `frames` WAL frames are now durable (shipped, or the caller's own).
    pub fn mark_durable(&mut self, frames: u64) {
        self.durable_frames = frames;
    }

    /// Appends durable frames (another writer's commits) to the local WAL.
    pub fn apply_frames(&mut self, frames: &[Frame], page_size: u32) -> Result<(), EngineError> {
        if page_size != self.page_size {
            // A new database adopts the page size of the first record it sees.
            if self.durable_frames == 0 && self.wal_frames()? == 0 {
                self.page_size = page_size;
            } else {
                return Err(EngineError::Corrupt(format!(
                    "log record page size {page_size} differs from the database's {}",
                    self.page_size
                )));
            }
        }
        let mut buf = vec![0u8; WAL_FRAME_HEADER_LEN + page_size as usize];
        self.conn.wal_insert_begin().map_err(sql_err)?;
        let mut next = self.durable_frames;
        let mut result = Ok(());
        for f in frames {
            next += 1;
            buf[..WAL_FRAME_HEADER_LEN].fill(0);
            buf[0..4].copy_from_slice(&f.page_no.to_be_bytes());
            buf[4..8].copy_from_slice(&f.db_size_after.to_be_bytes());
            buf[WAL_FRAME_HEADER_LEN..].copy_from_slice(&f.page);
            if let Err(e) = self.conn.wal_insert_frame(next, &buf) {
                // A page read that missed the cache is not corruption: the caller starts over.
                result = Err(self.missing_or(EngineError::Corrupt(format!("applying log frame {next}: {e}"))));
                break;
            }
        }
        let end = self.conn.wal_insert_end(false);
        result?;
        if let Err(e) = end {
            // Ending the insert session cannot fail to commit the frames (they end in a
            // commit frame); what follows, reading the schema again if they changed it, can
            // miss pages. It is read again, with them fetched, before the next statement.
            if !self.has_wanted() {
                return Err(sql_err(e));
            }
            self.schema_behind.set(true);
        }
        self.durable_frames = next;
        Ok(())
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

/// Skips whitespace and SQL comments.
fn skip_blank_sql(mut s: &str) -> &str {
    loop {
        let t = s.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            s = rest.find('\n').map_or("", |i| &rest[i + 1..]);
        } else if let Some(rest) = t.strip_prefix("/*") {
            s = rest.find("*/").map_or("", |i| &rest[i + 2..]);
        } else if let Some(rest) = t.strip_prefix(';') {
            s = rest;
        } else {
            return t;
        }
    }
}

/// The size of a WAL of `frames` frames of `page_size` pages (an empty WAL has no header).
fn wal_bytes(frames: u64, page_size: u32) -> u64 {
    if frames == 0 {
        0
    } else {
        WAL_HEADER_LEN + frames * (WAL_FRAME_HEADER_LEN as u64 + page_size as u64)
    }
}

pub(crate) fn is_blank_sql(s: &str) -> bool {
    skip_blank_sql(s).is_empty()
}

pub(crate) fn from_turso(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Numeric(turso_core::Numeric::Integer(i)) => SqlValue::Integer(*i),
        Value::Numeric(turso_core::Numeric::Float(f)) => SqlValue::Real(f64::from(*f)),
        Value::Text(t) => SqlValue::Text(t.as_str().to_string()),
        Value::Blob(_) => SqlValue::Blob(v.to_blob().map(|b| b.to_vec()).unwrap_or_default()),
    }
}

fn to_turso(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::from_i64(*i),
        SqlValue::Real(f) => Value::from_f64(*f),
        SqlValue::Text(t) => Value::build_text(t.clone()),
        SqlValue::Blob(b) => Value::from_blob(b.clone().into()),
    }
}

fn bind_params(stmt: &mut turso_core::Statement, params: &Params) -> Result<(), EngineError> {
    let count = stmt.parameters_count();
    match params {
        Params::None => {
            if count > 0 {
                return Err(EngineError::Params(format!("statement has {count} parameters but none were given")));
            }
        }
        Params::Positional(values) => {
            if values.len() != count {
                return Err(EngineError::Params(format!(
                    "statement has {count} parameters but {} were given",
                    values.len()
                )));
            }
            for (i, v) in values.iter().enumerate() {
                let idx = NonZero::new(i + 1).expect("i + 1 > 0");
                stmt.bind_at(idx, to_turso(v)).map_err(|e| EngineError::Params(e.to_string()))?;
            }
        }
        Params::Named(pairs) => {
            let mut bound = vec![false; count];
            for (name, v) in pairs {
                let idx = if name.starts_with([':', '@', '$']) {
                    stmt.parameter_index(name)
                } else {
                    [':', '@', '$'].iter().find_map(|p| stmt.parameter_index(&format!("{p}{name}")))
                };
                let Some(idx) = idx else {
                    return Err(EngineError::Params(format!("statement has no parameter named {name:?}")));
                };
                if std::mem::replace(&mut bound[idx.get() - 1], true) {
                    return Err(EngineError::Params(format!("parameter {name:?} is given twice")));
                }
                stmt.bind_at(idx, to_turso(v)).map_err(|e| EngineError::Params(e.to_string()))?;
            }
            if let Some(missing) = bound.iter().position(|b| !b) {
                let idx = NonZero::new(missing + 1).expect("> 0");
                let name = stmt.parameters().name(idx).unwrap_or_else(|| format!("?{}", missing + 1));
                return Err(EngineError::Params(format!("parameter {name} is not bound")));
            }
        }
    }
    Ok(())
}
