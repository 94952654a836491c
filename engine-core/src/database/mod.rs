//! A durable database: the local turso database kept in step with the objects in the
//! store (see ARCHITECTURE.md). One module per concern:
//!
//! * this file: the [`Database`] handle, opening, and running a group of requests;
//! * [`run`]: executing requests on the local database (transactions and scripts);
//! * [`pages`]: lazy page reads (fetch first and retry) and rebuilding the local database;
//! * [`replay`]: applying log records, freshness probes, moving onto newer checkpoints;
//! * [`commit`]: publishing a log record (the single-writer fence, the zombie fence);
//! * [`checkpoint`]: folding the log into chunk objects and moving the manifest;
//! * [`entries`]: the history entry of every checkpoint generation;
//! * [`gc`]: deleting what neither a reader nor the history window still needs;
//! * [`history`]: the commit at a time, the state after a past commit, restoring it;
//! * [`fork`]: a new database starting from a past commit, sharing its chunks;
//! * [`export`]: a state as a SQLite file, piece by piece;
//! * [`dump`]: a state as SQL text (`sqlite3 .dump`'s form), piece by piece;
//! * [`import`]: a SQLite file as a new state, checked before it is published;
//! * [`sql_import`]: a SQL dump as a new state, through an import of the file it builds;
//! * [`upload`]: an import larger than one request body, in resumable parts;
//! * [`delete`]: emptying a database as a commit, and purging its history;
//! * [`info`]: what a database is now, for its owner.

mod checkpoint;
mod commit;
mod delete;
mod dump;
mod entries;
mod export;
mod fork;
mod gc;
mod history;
mod import;
mod info;
mod pages;
mod replay;
mod run;
mod sql_import;
mod upload;

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use crate::cache::{PageCache, DEFAULT_CACHE_BYTES};
use crate::chunk_file::CheckpointView;
use crate::error::EngineError;
use crate::guard::{check_statement, StatementKind};
use crate::host::{Host, Sleeper};
use crate::layout::Layout;
use crate::local::{ExecLimits, LocalDb};
use crate::log_record::{LogRecord, SnapshotOrigin};
use crate::manifest::{ForkedFrom, Manifest};
use crate::script::{Script, ScriptOutcome, StepOutcome};
use crate::store::ObjectStore;
use crate::value::{ExecStats, Statement, StatementResult};

use commit::Publish;
use replay::{ProbeResult, SeenAhead, SeenTail};
pub use replay::MIN_RETENTION_FOR_CONCURRENT_PROBE_MS;

pub use delete::{DeleteMode, Deleted, Purged, PURGE_CALL_BUDGET};
pub use dump::SqlDump;
pub use export::FileExport;
pub use fork::Forked;
pub use import::{FileCheck, Imported, QUICK_CHECK_MAX_BYTES};
pub use sql_import::MAX_SQL_IMPORT_BYTES;
pub use upload::{
    PartStored, SessionState, UploadSession, UploadStatus, UPLOAD_LIFETIME_MS, UPLOAD_MAX_BYTES, UPLOAD_PART_DEFAULT_BYTES,
    UPLOAD_PART_MAX_BYTES,
};
pub use history::{HistoryWindow, Restored, HISTORY_EDGE_MARGIN_MS};
pub use info::{CheckpointInfo, DatabaseInfo, DeletionInfo};

/// How far back history reaches by default: 7 days.
pub const DEFAULT_HISTORY_RETENTION_MS: f64 = 7.0 * 24.0 * 60.0 * 60.0 * 1000.0;

#[derive(Debug, Clone, Copy)]
pub struct DbConfig {
    /// Times a group runs at most before a lost commit race is reported as a conflict...
    pub max_commit_attempts: u32,
    /// ...and how long it may keep trying (ms), waiting a jittered, growing backoff
    /// between attempts so that contending isolates spread out.
    pub commit_budget_ms: f64,
    /// The backoff before the n-th retry is uniform in 0..min(cap, base * 2^n) ms.
    pub backoff_base_ms: f64,
    pub backoff_cap_ms: f64,
    /// Times an ambiguous PUT is resolved (read back, re-PUT) before giving up.
    pub put_resolve_attempts: u32,
    /// Objects fetched at once (Workers allow 6 open connections per request).
    pub fetch_concurrency: usize,
    /// Pages fetched together on a cache miss (an aligned group within one chunk).
    pub fetch_group_pages: u32,
    /// Checkpoint once this many log records follow the last checkpoint...
    pub checkpoint_records: u64,
    /// ...or once they hold this many bytes...
    pub checkpoint_bytes: u64,
    /// ...but no sooner than this long after the last checkpoint (ms): each one writes the
    /// manifest, and R2 takes about one write per second to one key.
    pub checkpoint_min_interval_ms: f64,
    /// Once its writer has been quiet for `checkpoint_min_interval_ms`, a log tail of this
    /// many bytes is folded, so that cold readers do not replay it (see
    /// [`Database::quiet_checkpoint_due`]).
    pub quiet_checkpoint_bytes: u64,
    /// The most log a replica holds unfolded (`UNFOLDED_LOG`): it lives in the isolate's
    /// memory, and folding it takes about twice as much again. A commit that leaves more
    /// waits out the interval between checkpoints and folds it, which holds back a bulk
    /// load to what the isolate can hold.
    pub max_unfolded_log_bytes: u64,
    /// Superseded objects are deleted only this long after they stopped being referenced
    /// (readers of older checkpoints may still use them)...
    pub gc_retention_ms: f64,
    /// ...or, if longer, this long: every commit this recent can be read, restored and
    /// forked (the history window). 0 keeps only what readers need.
    pub history_retention_ms: f64,
    /// Objects nothing references are swept for at most this often (at a checkpoint).
    pub orphan_sweep_interval_ms: f64,
    /// Read-only requests skip the freshness probe if the last one (or the last commit)
    /// was less than this long ago. 0 = every request sees every earlier commit.
    pub max_staleness_ms: f64,
    /// Imported files up to this size are checked with SQLite's `quick_check`.
    pub quick_check_max_bytes: u64,
    /// The most WAL a SQL dump may write while it is built in memory (`SQL_IMPORT_SIZE`).
    pub sql_import_max_bytes: u64,
    pub limits: ExecLimits,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig {
            max_commit_attempts: 64,
            commit_budget_ms: 5_000.0,
            backoff_base_ms: 4.0,
            backoff_cap_ms: 128.0,
            put_resolve_attempts: 4,
            fetch_concurrency: 6,
            fetch_group_pages: 16,
            checkpoint_records: 32,
            checkpoint_bytes: 1 << 20,
            checkpoint_min_interval_ms: 1_000.0,
            quiet_checkpoint_bytes: 256 << 10,
            max_unfolded_log_bytes: 8 << 20,
            gc_retention_ms: 10.0 * 60.0 * 1000.0,
            history_retention_ms: DEFAULT_HISTORY_RETENTION_MS,
            orphan_sweep_interval_ms: gc::ORPHAN_SWEEP_INTERVAL_MS,
            max_staleness_ms: 0.0,
            quick_check_max_bytes: import::QUICK_CHECK_MAX_BYTES,
            sql_import_max_bytes: sql_import::MAX_SQL_IMPORT_BYTES,
            limits: ExecLimits::default(),
        }
    }
}

/// What a database needs from the world: its store, the isolate's page cache, the host's
/// clock and randomness, and a way to wait.
#[derive(Clone)]
pub struct DbContext {
    pub store: Rc<dyn ObjectStore>,
    pub cache: Arc<PageCache>,
    pub host: Arc<dyn Host>,
    pub sleeper: Rc<dyn Sleeper>,
}

impl DbContext {
    /// The platform's clock and randomness, a cache of its own, no waiting.
    pub fn new(store: Rc<dyn ObjectStore>) -> Self {
        DbContext {
            store,
            cache: Arc::new(PageCache::new(DEFAULT_CACHE_BYTES)),
            host: crate::host::system(),
            sleeper: Rc::new(crate::host::NoSleep),
        }
    }

    pub fn with_sleeper(mut self, sleeper: Rc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }

    pub fn with_cache(mut self, cache: Arc<PageCache>) -> Self {
        self.cache = cache;
        self
    }

    pub fn with_host(mut self, host: Arc<dyn Host>) -> Self {
        self.host = host;
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TxResult {
    pub results: Vec<StatementResult>,
    pub stats: ExecStats,
}

/// How fresh the state a read-only answer comes from must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadFrom {
    /// Reflects every commit acknowledged before the request began (the default).
    Latest,
    /// A state proven current less than this many ms ago.
    WithinMs(f64),
    /// A state at or after this log position (a session's bookmark).
    AtLeast(u64),
}

/// One request: what to run and how fresh its answers must be.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub work: Work,
    pub read_from: ReadFrom,
}

/// What one request asks of the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Statements run as one transaction that the engine begins and commits: all or nothing.
    Transaction(Vec<Statement>),
    /// Steps with conditions; the script controls transactions itself.
    Script(Script),
}

/// What became of one request's work.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Transaction(Vec<StatementResult>),
    Script(ScriptOutcome),
}

impl Reply {
    fn statement_results(&self) -> Box<dyn Iterator<Item = &StatementResult> + '_> {
        match self {
            Reply::Transaction(results) => Box::new(results.iter()),
            Reply::Script(outcome) => Box::new(outcome.steps.iter().filter_map(|s| match s {
                StepOutcome::Executed(r) => Some(r),
                _ => None,
            })),
        }
    }
}

/// A request's reply, durable, with its counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub reply: Reply,
    pub stats: ExecStats,
}

/// One request of a group: what became of it.
type Outcome = Result<Reply, EngineError>;

/// One pass of a group's requests over the local state.
struct LocalRun {
    /// One per request that ran, in order; requests after them wait for the next group.
    outcomes: Vec<Outcome>,
    /// The pages the first request that missed some needs (the rest did not run).
    missing: Option<Vec<u32>>,
}

/// Which `WRITE_SIZE` bound a request runs under: its own, or the tighter rest of what its
/// group's record may still hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteBound {
    Request,
    Group,
}

/// What a transaction request is, as far as running it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One statement that only reads: it runs as its own implicit transaction.
    SingleRead,
    /// Several statements that only read, in one explicit transaction.
    Reads,
    /// Anything that may write.
    Other,
}

/// What the engine keeps of a log record besides its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordMeta {
    seq: u64,
    /// The record object's size.
    bytes: u64,
    committed_ms: u64,
    /// The first 8 bytes of the record's nonce: which write this record is. A checkpoint
    /// keeps them for the records it folds (the zombie fence tells a record that was
    /// folded from one re-created at a collected key by comparing them).
    nonce: u64,
    kind: RecordKind,
}

/// What a log record does to the state before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordKind {
    /// Its frames change some pages.
    Frames,
    /// It replaces the whole state with an image (see [`SnapshotOrigin`]): restored chunks
    /// come back to life; a deletion empties the database, and a purging one also ends the
    /// history before it.
    Snapshot { revives: bool, deletes: bool, ends_history: bool },
}

impl RecordMeta {
    fn of(record: &LogRecord, bytes: u64) -> Self {
        let kind = match &record.snapshot {
            None => RecordKind::Frames,
            Some(s) => RecordKind::Snapshot {
                revives: matches!(s.origin, SnapshotOrigin::Restore { .. }),
                deletes: matches!(s.origin, SnapshotOrigin::Delete { .. }),
                ends_history: matches!(s.origin, SnapshotOrigin::Delete { purge: true }),
            },
        };
        RecordMeta { seq: record.seq, bytes, committed_ms: record.committed_ms, nonce: nonce_id(&record.nonce), kind }
    }
}

/// The checkpoint image the local database reads its pages from: the base manifest's, or
/// that of a snapshot record applied since.
#[derive(Debug, Clone)]
struct Image {
    view: CheckpointView,
    /// The snapshot record it comes from (`None`: the base manifest).
    snapshot_seq: Option<u64>,
    /// The fork this database began as, if it did (see [`Manifest::forked_from`]).
    forked_from: Option<ForkedFrom>,
}

impl Image {
    fn of_manifest(m: &Manifest) -> Self {
        Image { view: CheckpointView::from_manifest(m), snapshot_seq: None, forked_from: m.forked_from.clone() }
    }

    /// An image that is only read (a past state, an import being checked).
    fn read_only(view: CheckpointView) -> Self {
        Image { view, snapshot_seq: None, forked_from: None }
    }
}

/// The part of a record nonce a checkpoint keeps.
fn nonce_id(nonce: &[u8; 16]) -> u64 {
    u64::from_le_bytes(nonce[..8].try_into().expect("8 bytes"))
}

/// A log record applied after the base checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AppliedRecord {
    meta: RecordMeta,
    /// The last local WAL frame holding this record's frames (0 for records before the
    /// snapshot record the local database now starts from: their frames are not in it).
    end_frame: u64,
}

/// What a database handle follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The newest state: it commits, and proves answers current.
    Live,
    /// The state after one past commit: read-only, never refreshed.
    Past { seq: u64 },
}

pub struct Database {
    layout: Layout,
    mode: Mode,
    store: Rc<dyn ObjectStore>,
    cache: Arc<PageCache>,
    host: Arc<dyn Host>,
    sleeper: Rc<dyn Sleeper>,
    config: DbConfig,
    /// `None` only after a rebuild failed; the next request rebuilds it from the store.
    local: Option<LocalDb>,
    /// The newest manifest known, and its etag (`None`: absent).
    base: Manifest,
    base_etag: Option<String>,
    /// When this replica first saw `base`, by its own clock. Checkpoint pacing counts from
    /// the earlier of this and `base.written_ms` (the writer's clock, which may run ahead).
    base_seen_ms: f64,
    /// The checkpoint image `local` is built on: `base`'s, or a snapshot record's.
    image: Image,
    /// History entries and full chunk maps read lately (they never change).
    entries: RefCell<entries::EntryCache>,
    /// Highest log record reflected in `local` (all durable).
    applied_seq: u64,
    /// The applied records after the base checkpoint, in order.
    records: Vec<AppliedRecord>,
    /// Commit time of record `applied_seq` (of the checkpoint if no record follows it).
    last_commit_ms: u64,
    /// Log records were applied (read by GET or LIST) since the manifest was last checked.
    /// Until a manifest read made after them shows no checkpoint covering them they are not
    /// trusted: a record key below a checkpoint can be collected and re-created by a zombie
    /// writer, and only the manifest tells the real record from such a one.
    unverified_records: bool,
    /// When local state was last proven current (ms since the epoch).
    validated_ms: f64,
    /// When the last observation that proved local state current by reading the manifest
    /// (a probe's HEAD, an open's LIST, a commit's fence check) began: time proves absences
    /// from it for half the GC window ([`Self::time_proves_absence`]).
    manifest_proof_ms: f64,
    /// What the request in progress saw after the applied log record (an open's LIST, or a
    /// probe sent ahead of a read): its freshness probe then needs no GET, and perhaps no
    /// HEAD either.
    seen_tail: Option<SeenTail>,
    /// The page after the last group a waiting statement fetched (see [`PageSource`]).
    scan_resumes_at: std::cell::Cell<u32>,
}

/// Page-fetch rounds one group may take (each round fetches at least one new page group).
const MAX_FETCH_ROUNDS: u32 = 10_000;

impl Database {
    /// Opens a database from the object store alone. It is not yet proven current: the
    /// first request's freshness probe does that, or its commit's conditional PUT fences it.
    pub async fn open(ctx: DbContext, layout: Layout, config: DbConfig) -> Result<Self, EngineError> {
        let mut db = Self::open_for_waiting_requests(ctx, layout, config).await?;
        db.seen_tail = None;
        Ok(db)
    }

    /// [`Self::open`] for requests that are already waiting: the LIST made while opening
    /// happens during them, so it stands in for the GET of their freshness probe (one R2
    /// read less on a cold start). The next [`Self::perform`] must be theirs.
    pub async fn open_for_waiting_requests(ctx: DbContext, layout: Layout, config: DbConfig) -> Result<Self, EngineError> {
        let (base, base_etag) = replay::read_manifest(&ctx.store, &layout).await?;
        let base_seen_ms = ctx.host.now_ms();
        let mut db = Database {
            layout,
            mode: Mode::Live,
            store: ctx.store,
            cache: ctx.cache,
            host: ctx.host,
            sleeper: ctx.sleeper,
            config,
            local: None,
            applied_seq: base.checkpoint_seq,
            last_commit_ms: base.committed_ms,
            image: Image::of_manifest(&base),
            base_seen_ms,
            base,
            base_etag,
            entries: RefCell::new(entries::EntryCache::default()),
            records: Vec::new(),
            unverified_records: false,
            validated_ms: f64::NEG_INFINITY,
            manifest_proof_ms: f64::NEG_INFINITY,
            seen_tail: None,
            scan_resumes_at: Default::default(),
        };
        db.cache_embedded_pages(&db.base);
        db.local = Some(db.create_local().await?);
        db.replay_listed_log().await?;
        Ok(db)
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    pub fn checkpoint_seq(&self) -> u64 {
        self.base.checkpoint_seq
    }

    /// Bytes of log records after the checkpoint: held in memory until folded (see
    /// [`DbConfig::max_unfolded_log_bytes`]).
    pub fn unfolded_log_bytes(&self) -> u64 {
        self.log_since_checkpoint().1
    }

    /// Gives turso's cache of parsed pages for this database at most `pages` pages (a host
    /// with many databases open shares its memory among them; see [`LocalDb::fit_parsed_pages`]).
    pub fn fit_parsed_pages(&self, pages: u32) {
        if let Some(local) = &self.local {
            local.fit_parsed_pages(pages);
        }
    }

    /// The capacity of turso's cache of parsed pages for this database, if it is open.
    pub fn parsed_pages(&self) -> Option<u32> {
        self.local.as_ref().map(LocalDb::parsed_pages)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn cache(&self) -> &Arc<PageCache> {
        &self.cache
    }

    pub fn config(&self) -> &DbConfig {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut DbConfig {
        &mut self.config
    }

    fn now_ms(&self) -> f64 {
        self.host.now_ms()
    }

    fn local(&self) -> Result<&LocalDb, EngineError> {
        self.local.as_ref().ok_or_else(lost_local)
    }

    fn local_mut(&mut self) -> Result<&mut LocalDb, EngineError> {
        self.local.as_mut().ok_or_else(lost_local)
    }

    /// How fresh answers must be when the caller does not say: the configured bound.
    fn default_read_from(&self) -> ReadFrom {
        if self.config.max_staleness_ms > 0.0 {
            ReadFrom::WithinMs(self.config.max_staleness_ms)
        } else {
            ReadFrom::Latest
        }
    }

    /// Runs `statements` as one transaction and makes it durable before returning.
    pub async fn transact(&mut self, statements: &[Statement]) -> Result<TxResult, EngineError> {
        self.transact_group(vec![statements.to_vec()]).await.pop().unwrap_or_else(|| Err(no_reply()))
    }

    /// Runs several requests, each its own transaction, committing all their writes with
    /// one log record. Each request gets its own result; one failing does not fail others.
    pub async fn transact_group(&mut self, requests: Vec<Vec<Statement>>) -> Vec<Result<TxResult, EngineError>> {
        let read_from = self.default_read_from();
        let requests = requests.into_iter().map(|stmts| Request { work: Work::Transaction(stmts), read_from }).collect();
        self.perform(requests)
            .await
            .into_iter()
            .map(|done| {
                let done = done?;
                match done.reply {
                    Reply::Transaction(results) => Ok(TxResult { results, stats: done.stats }),
                    Reply::Script(_) => Err(EngineError::Internal("a transaction got a script's reply".into())),
                }
            })
            .collect()
    }

    /// Runs one script and makes what it committed durable before returning.
    pub async fn run_script(&mut self, script: Script) -> Result<(ScriptOutcome, ExecStats), EngineError> {
        let request = Request { work: Work::Script(script), read_from: self.default_read_from() };
        let done = self.perform(vec![request]).await.pop().unwrap_or_else(|| Err(no_reply()))?;
        match done.reply {
            Reply::Script(outcome) => Ok((outcome, done.stats)),
            Reply::Transaction(_) => Err(EngineError::Internal("a script got a transaction's reply".into())),
        }
    }

    /// Runs several requests (a group), committing all their writes with one log record
    /// before any reply is returned (several records in turn when together they write more
    /// than `WRITE_SIZE`). One request failing does not fail the others.
    pub async fn perform(&mut self, requests: Vec<Request>) -> Vec<Result<Done, EngineError>> {
        let past = matches!(self.mode, Mode::Past { .. });
        let checked: Vec<Result<Shape, EngineError>> = requests
            .iter()
            .map(|r| match &r.work {
                Work::Transaction(stmts) => {
                    let kinds = stmts.iter().map(|s| check_statement(&s.sql)).collect::<Result<Vec<_>, _>>()?;
                    if past && kinds.iter().any(|k| *k != StatementKind::Read) {
                        return Err(read_only_past());
                    }
                    Ok(match kinds.as_slice() {
                        [StatementKind::Read] => Shape::SingleRead,
                        [_, _, ..] if kinds.iter().all(|k| *k == StatementKind::Read) => Shape::Reads,
                        _ => Shape::Other,
                    })
                }
                Work::Script(_) if past => Err(read_only_past()),
                Work::Script(_) => Ok(Shape::Other),
            })
            .collect();
        // Requests past what one record may hold (`WRITE_SIZE`) run as a group of their own.
        let mut replies = Vec::with_capacity(requests.len());
        while replies.len() < requests.len() {
            let next = replies.len();
            let mut stats = ExecStats::default();
            let outcome = self.run_group(&requests[next..], &checked[next..], &mut stats).await;
            if let Some(local) = &self.local {
                local.clear_pins();
            }
            // A LIST or a probe sent ahead proves absence only within the request that made it.
            self.seen_tail = None;
            let outcomes = match outcome {
                Ok(outcomes) if !outcomes.is_empty() => outcomes,
                Ok(_) => vec![Err(no_reply())],
                Err(e) => {
                    replies.extend(requests[next..].iter().map(|_| Err(e.clone())));
                    break;
                }
            };
            replies.extend(outcomes.into_iter().map(|o| {
                o.map(|reply| {
                    let mut s = stats;
                    s.rows_read = reply.statement_results().map(|r| r.rows_read).sum();
                    s.rows_written = reply.statement_results().map(|r| r.rows_written).sum();
                    Done { reply, stats: s }
                })
            }));
        }
        replies
    }

    /// True if every request of the group may be answered from the local state as it is,
    /// without proving it current.
    fn answers_may_stand(&self, requests: &[Request], outcomes: &[Outcome]) -> bool {
        // An error is reported only after a freshness check, so that it is never the
        // artifact of a stale state.
        if let Mode::Past { .. } = self.mode {
            return true;
        }
        if outcomes.iter().any(|o| o.is_err()) {
            return false;
        }
        let now = self.now_ms();
        requests.iter().all(|r| self.fresh_enough(r.read_from, now))
    }

    /// True if the local state, as it is at `now`, is as fresh as `read_from` asks.
    fn fresh_enough(&self, read_from: ReadFrom, now: f64) -> bool {
        match read_from {
            ReadFrom::Latest => false,
            ReadFrom::WithinMs(ms) => ms > 0.0 && now - self.validated_ms < ms,
            ReadFrom::AtLeast(seq) => self.applied_seq >= seq,
        }
    }

    /// The freshness probe a group of reads will need whatever they find, started
    /// before they run so that it shares a round trip with any page they fetch (see
    /// [`Self::probe_ahead`]). None for groups that may write (a commit's conditional PUT
    /// proves them current), that may stand without a probe, or whose probe is partly done
    /// (the LIST of an open).
    fn probe_ahead_for(
        &self,
        requests: &[Request],
        checked: &[Result<Shape, EngineError>],
    ) -> Option<impl Future<Output = SeenAhead> + use<>> {
        let now = self.now_ms();
        let reads_only = checked.iter().all(|c| matches!(c, Ok(Shape::SingleRead | Shape::Reads)));
        let all_need_probe = requests.iter().all(|r| !self.fresh_enough(r.read_from, now));
        if self.mode != Mode::Live || self.seen_tail.is_some() || !reads_only || !all_need_probe {
            return None;
        }
        self.probe_ahead()
    }

    /// Runs every request of the group on the local state, up to the first that misses pages
    /// or that would take the group's record past `WRITE_SIZE` (it and the rest wait for the
    /// next record).
    async fn run_locally(&mut self, requests: &[Request], checked: &[Result<Shape, EngineError>]) -> LocalRun {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(requests.len());
        let max_write = self.config.limits.max_write_bytes;
        let group_start = match self.local().and_then(LocalDb::wal_frames) {
            Ok(frames) => frames,
            Err(e) => return LocalRun { outcomes: vec![Err(e)], missing: None },
        };
        for (request, check) in requests.iter().zip(checked) {
            let mut bound = WriteBound::Request;
            let start_frames = match self.local().and_then(|local| {
                let start = local.wal_frames()?;
                let group_left = max_write.saturating_sub(local.frames_bytes(start - group_start));
                if group_left < max_write {
                    bound = WriteBound::Group;
                }
                local.limit_writes(Some(group_left.min(max_write)))?;
                Ok(start)
            }) {
                Ok(frames) => frames,
                Err(e) => {
                    outcomes.push(Err(e));
                    break;
                }
            };
            let mut outcome = match (check, &request.work) {
                (Err(e), _) => Err(e.clone()),
                (Ok(shape), Work::Transaction(stmts)) => self.run_local(stmts, *shape).await.map(Reply::Transaction),
                (Ok(_), Work::Script(script)) => self.run_script_local(script).await.map(Reply::Script),
            };
            if self.local.as_ref().is_some_and(LocalDb::write_limit_hit) {
                outcome = match bound {
                    WriteBound::Request => self.undo_request(start_frames),
                    // It may fit a record of its own: it and the rest run in the next group.
                    WriteBound::Group => match self.rewind_local(start_frames) {
                        Ok(()) => break,
                        Err(e) => Err(e),
                    },
                };
            }
            if let Err(EngineError::PagesMissing(pages)) = &outcome {
                let missing = Some(pages.clone());
                self.lift_write_limit();
                return LocalRun { outcomes, missing };
            }
            outcomes.push(outcome);
        }
        self.lift_write_limit();
        LocalRun { outcomes, missing: None }
    }

    /// Catching up appends others' commits, which no request's `WRITE_SIZE` covers.
    fn lift_write_limit(&self) {
        if let Some(local) = &self.local {
            let _ = local.limit_writes(None);
        }
    }

    /// Undoes a request that wrote more than `WRITE_SIZE`: the WAL goes back to where it
    /// was when the request began (turso failed mid-write, so its own rollback is not
    /// trusted), and the request is answered with the limit.
    fn undo_request(&mut self, start_frames: u64) -> Outcome {
        self.rewind_local(start_frames)?;
        Err(EngineError::Limit(format!(
            "the request wrote more than {} bytes to the database (WRITE_SIZE limit) and changed nothing; \
             write in smaller transactions (for example a few thousand rows each)",
            self.config.limits.max_write_bytes
        )))
    }

    async fn run_group(
        &mut self,
        requests: &[Request],
        checked: &[Result<Shape, EngineError>],
        stats: &mut ExecStats,
    ) -> Result<Vec<Outcome>, EngineError> {
        if let Mode::Past { .. } = self.mode {
            if self.local.is_none() {
                return Err(lost_local());
            }
        } else if self.local.is_none() {
            // An earlier rebuild failed: start again from the store.
            self.reload().await?;
        }
        if self.unverified_records {
            // An earlier call applied records and failed before checking the manifest.
            self.verify_records().await?;
        }
        // A request that must see at least some commit (a session's bookmark, a transaction
        // continuing where it ran before) and is ahead of this replica: catch up first.
        let wanted = requests.iter().filter_map(|r| match r.read_from {
            ReadFrom::AtLeast(seq) => Some(seq),
            _ => None,
        });
        if self.mode == Mode::Live && wanted.max().is_some_and(|seq| seq > self.applied_seq) {
            self.refresh(stats).await?;
        }
        let started_ms = self.now_ms();
        let mut fetch_rounds = 0;
        let mut attempt: u32 = 1;
        let mut ahead = self.probe_ahead_for(requests, checked);
        loop {
            // Run every request locally, fetching missing pages and starting over as needed.
            let LocalRun { outcomes, missing } = match ahead.take() {
                Some(probe) => {
                    let (seen, ran) = futures::join!(probe, self.run_locally(requests, checked));
                    self.accept_seen_ahead(seen);
                    ran
                }
                None => self.run_locally(requests, checked).await,
            };
            if let Some(pages) = missing {
                fetch_rounds += 1;
                stats.page_restarts += 1;
                if fetch_rounds > MAX_FETCH_ROUNDS {
                    return Err(EngineError::Internal("transaction kept missing pages".into()));
                }
                self.discard_local().await?;
                self.fetch_for_retry(&pages).await?;
                continue;
            }
            if let Some(Err(e)) = outcomes.iter().find(|o| matches!(o, Err(e) if !e.is_client_error())) {
                let e = e.clone();
                self.discard_local().await?;
                return Err(e);
            }

            let unshipped = self.local()?.unshipped_frame_count()?;
            if self.mode != Mode::Live && unshipped > 0 {
                self.discard_local().await?;
                return Err(read_only_past());
            }
            let lost_race = if unshipped == 0 {
                if self.answers_may_stand(requests, &outcomes) {
                    stats.bookmark = self.applied_seq;
                    return Ok(outcomes);
                }
                match self.refresh(stats).await? {
                    ProbeResult::Current => {
                        if let Some(ahead) = requests.iter().find_map(|r| match r.read_from {
                            ReadFrom::AtLeast(seq) if seq > self.applied_seq => Some(seq),
                            _ => None,
                        }) {
                            return Err(EngineError::InvalidBookmark(format!(
                                "the bookmark names log position {ahead}, but the database's newest commit is {}: it belongs to another database, or to one deleted since",
                                self.applied_seq
                            )));
                        }
                        stats.bookmark = self.applied_seq;
                        return Ok(outcomes);
                    }
                    // Newer commits arrived: run again on them (no backoff, nobody lost).
                    ProbeResult::Moved => false,
                }
            } else {
                // The record `publish` makes. The answers reflect it, not what the fence
                // check or a checkpoint catches up on after it (a later commit of another
                // isolate, a deletion even).
                let committed_seq = self.applied_seq + 1;
                match self.publish().await {
                    Publish::Published => {
                        stats.records_committed += 1;
                        stats.bookmark = committed_seq;
                        self.validated_ms = self.now_ms();
                        // The commit is durable and is acknowledged whatever happens next: a
                        // failed checkpoint only delays folding (and a broken local copy is
                        // rebuilt by the next request).
                        let _ = self.maybe_checkpoint().await;
                        return Ok(outcomes);
                    }
                    Publish::Stale => {
                        self.discard_local().await?;
                        self.refresh(stats).await?;
                        true
                    }
                    Publish::NotStored(e) => {
                        // Nothing was sent: nothing committed. The local copy is rebuilt
                        // by a later request if discarding needs calls this one lacks.
                        if self.discard_local().await.is_err() {
                            self.local = None;
                        }
                        return Err(e);
                    }
                    Publish::Unknown(why) => {
                        // Whatever else fails now, the answer is that the outcome is
                        // unknown: any other error would promise that nothing committed.
                        if let Err(e) = self.discard_local().await {
                            self.local = None;
                            return Err(EngineError::CommitUnknown(format!("{why}; then {e}")));
                        }
                        return Err(EngineError::CommitUnknown(why));
                    }
                }
            };
            let elapsed = self.now_ms() - started_ms;
            if attempt >= self.config.max_commit_attempts || elapsed >= self.config.commit_budget_ms {
                return Err(EngineError::Conflict { attempts: attempt, elapsed_ms: elapsed.max(0.0) as u64 });
            }
            if lost_race {
                self.back_off(attempt).await;
            }
            attempt += 1;
            stats.retries += 1;
        }
    }

    /// Waits before the next attempt after losing a commit race: uniform in
    /// `0..min(cap, base * 2^attempt)` ("full jitter"), so that contending isolates do not
    /// retry in lockstep.
    async fn back_off(&self, attempt: u32) {
        let ceiling = (self.config.backoff_base_ms * 2f64.powi(attempt.min(20) as i32)).min(self.config.backoff_cap_ms);
        let mut b = [0u8; 8];
        self.host.fill_random(&mut b);
        let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
        let ms = ceiling * unit;
        if ms > 0.0 {
            self.sleeper.sleep(ms).await;
        }
    }
}

fn lost_local() -> EngineError {
    EngineError::Internal("the local database was lost by a failed rebuild; the next request rebuilds it".into())
}

fn read_only_past() -> EngineError {
    EngineError::NotAllowed("a read of a past commit (as_of) is read-only: only statements that read may run".into())
}

fn no_reply() -> EngineError {
    EngineError::Internal("the engine returned no reply for a request".into())
}
