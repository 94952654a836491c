//! A durable database: the local turso database kept in step with the objects in the
//! store. The commit protocol, freshness, lazy page reads, checkpoints and GC live here
//! (see ARCHITECTURE.md):
//!
//! * Requests run optimistically on local state, each as one transaction; concurrent
//!   requests of one isolate are grouped and share one commit record (group commit).
//! * If the group wrote, its frames become log record `applied + 1`, created by a
//!   create-only PUT. Only one writer can create a given record: that is the single-writer
//!   fence. After the PUT lands, the manifest is checked so that a writer stalled across a
//!   checkpoint and a GC (a zombie) never acknowledges a record nobody will read.
//! * If it only read, the next log record and the manifest are probed (in that order) to
//!   prove the local state was current at some moment during the request.
//! * If another writer got there first, local frames are discarded, the missed records are
//!   applied, and the group runs again (bounded), else a conflict is reported.
//! * Pages of the checkpoint are read lazily: a transaction that needs an uncached page
//!   fails locally, the page's group is fetched by a range GET, and it runs again.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use futures::future::join_all;

use crate::cache::{PageCache, DEFAULT_CACHE_BYTES};
use crate::chunk_file::CheckpointView;
use crate::error::EngineError;
use crate::guard::{begins_read_only, check_script_statement, check_statement, StatementKind};
use crate::io::{now_millis, random_bytes};
use crate::layout::Layout;
use crate::local::{ExecLimits, LocalDb};
use crate::log_record::{Frame, LogRecord};
use crate::manifest::{Garbage, Manifest};
use crate::store::{ByteRange, ObjectStore, PutCondition, PutOutcome, StoreError, MAX_LIST_LIMIT};
use crate::script::{Action, ScriptOutcome, Step, StepOutcome};
use crate::value::{ExecStats, Statement, StatementResult};

/// What a transaction request is, as far as running it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One statement that only reads.
    SingleRead,
    Other,
}

#[derive(Debug, Clone, Copy)]
pub struct DbConfig {
    /// Times a group runs before a lost commit race is reported as a conflict.
    pub max_commit_attempts: u32,
    /// Times an ambiguous PUT is resolved (read back, re-PUT) before giving up.
    pub put_resolve_attempts: u32,
    /// Objects fetched at once (Workers allow 6 open connections per request).
    pub fetch_concurrency: usize,
    /// Pages fetched together on a cache miss (an aligned group within one chunk).
    pub fetch_group_pages: u32,
    /// Checkpoint once this many log records follow the last checkpoint...
    pub checkpoint_records: u64,
    /// ...or once they hold this many bytes.
    pub checkpoint_bytes: u64,
    /// Superseded objects are deleted only this long after they stopped being referenced.
    pub gc_retention_ms: f64,
    /// Read-only requests skip the freshness probe if the last one (or the last commit)
    /// was at most this long ago. 0 = every request sees every earlier commit.
    pub max_staleness_ms: f64,
    pub limits: ExecLimits,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig {
            max_commit_attempts: 5,
            put_resolve_attempts: 4,
            fetch_concurrency: 6,
            fetch_group_pages: 16,
            checkpoint_records: 32,
            checkpoint_bytes: 1 << 20,
            gc_retention_ms: 10.0 * 60.0 * 1000.0,
            max_staleness_ms: 0.0,
            limits: ExecLimits::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TxResult {
    pub results: Vec<StatementResult>,
    pub stats: ExecStats,
}

/// Times one refresh may move onto a newer checkpoint before giving up.
const MAX_MANIFEST_ROUNDS: u32 = 16;

/// Page-fetch rounds one group may take (each round fetches at least one new page group).
const MAX_FETCH_ROUNDS: u32 = 10_000;

enum Publish {
    Published,
    /// Another writer owns this sequence number (or we were a zombie): catch up and retry.
    Stale,
    /// Could not determine whether the record landed.
    Unknown(String),
}

/// What one request asks of the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Statements run as one transaction that the engine begins and commits: all or nothing.
    Transaction(Vec<Statement>),
    /// Steps with conditions; the script controls transactions itself.
    Script(Vec<Step>),
}

/// What became of one request's work.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Transaction(Vec<StatementResult>),
    Script(ScriptOutcome),
}

impl Reply {
    fn statement_results(&self) -> impl Iterator<Item = &StatementResult> {
        let (tx, script) = match self {
            Reply::Transaction(results) => (Some(results.iter()), None),
            Reply::Script(outcome) => (
                None,
                Some(outcome.steps.iter().filter_map(|s| match s {
                    StepOutcome::Executed(r) => Some(r),
                    _ => None,
                })),
            ),
        };
        tx.into_iter().flatten().chain(script.into_iter().flatten())
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

pub struct Database {
    layout: Layout,
    store: Rc<dyn ObjectStore>,
    cache: Arc<PageCache>,
    config: DbConfig,
    /// Always `Some` between calls; taken only while being replaced.
    local: Option<LocalDb>,
    /// The manifest `local` is based on, and its etag (`None`: absent).
    base: Manifest,
    base_etag: Option<String>,
    /// The newest manifest etag seen (may be newer than `base`).
    seen_etag: Option<String>,
    /// Highest log record reflected in `local` (all durable).
    applied_seq: u64,
    /// For each applied record after the base checkpoint: (seq, last local WAL frame, bytes).
    records: Vec<(u64, u64, u64)>,
    /// When local state was last proven current (ms since the epoch).
    validated_ms: f64,
    /// A LIST during the request in progress showed no log record at this seq (the next
    /// one): its freshness probe then needs only the manifest HEAD, not a GET.
    listed_absent: Option<u64>,
}

impl Database {
    /// Opens a database from the object store alone, with a cache of its own.
    pub async fn open(store: Rc<dyn ObjectStore>, layout: Layout, config: DbConfig) -> Result<Self, EngineError> {
        Self::open_with_cache(store, layout, config, Arc::new(PageCache::new(DEFAULT_CACHE_BYTES))).await
    }

    /// Opens a database sharing `cache` (one cache per isolate, across databases). It is
    /// not yet proven current: the first request's freshness probe does that, or its
    /// commit's conditional PUT fences it.
    pub async fn open_with_cache(
        store: Rc<dyn ObjectStore>,
        layout: Layout,
        config: DbConfig,
        cache: Arc<PageCache>,
    ) -> Result<Self, EngineError> {
        let mut db = Self::open_for_waiting_requests(store, layout, config, cache).await?;
        db.listed_absent = None;
        Ok(db)
    }

    /// [`Self::open_with_cache`] for requests that are already waiting: the LIST made while
    /// opening happens during them, so it stands in for the GET of their freshness probe
    /// (one R2 read less on a cold start). The next [`Self::perform`] must be theirs.
    pub async fn open_for_waiting_requests(
        store: Rc<dyn ObjectStore>,
        layout: Layout,
        config: DbConfig,
        cache: Arc<PageCache>,
    ) -> Result<Self, EngineError> {
        let (base, base_etag) = Self::read_manifest(&store, &layout).await?;
        let mut db = Database {
            layout,
            store,
            cache,
            config,
            local: None,
            applied_seq: base.checkpoint_seq,
            seen_etag: base_etag.clone(),
            base,
            base_etag,
            records: Vec::new(),
            validated_ms: 0.0,
            listed_absent: None,
        };
        db.local = Some(db.create_local().await?);
        db.replay_listed_log().await?;
        Ok(db)
    }

    async fn read_manifest(store: &Rc<dyn ObjectStore>, layout: &Layout) -> Result<(Manifest, Option<String>), EngineError> {
        Ok(match store.get(&layout.manifest_key(), None).await? {
            Some(obj) => (Manifest::decode(&obj.body)?, Some(obj.meta.etag)),
            None => (Manifest::empty(), None),
        })
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    pub fn checkpoint_seq(&self) -> u64 {
        self.base.checkpoint_seq
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn cache(&self) -> &Arc<PageCache> {
        &self.cache
    }

    pub fn config_mut(&mut self) -> &mut DbConfig {
        &mut self.config
    }

    fn local(&self) -> &LocalDb {
        self.local.as_ref().expect("local database present between calls")
    }

    fn local_mut(&mut self) -> &mut LocalDb {
        self.local.as_mut().expect("local database present between calls")
    }

    fn view(&self) -> CheckpointView {
        let mut view = CheckpointView::from_manifest(&self.base);
        if view.page_size == 0 {
            view.page_size = 4096;
        }
        view
    }

    /// A local database on the base checkpoint with an empty WAL.
    async fn create_local(&mut self) -> Result<LocalDb, EngineError> {
        for _ in 0..MAX_FETCH_ROUNDS {
            match LocalDb::create(self.view(), self.cache.clone()) {
                Ok(local) => return Ok(local),
                Err(EngineError::PagesMissing(pages)) => self.fetch_pages(None, &pages).await?,
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Internal("opening the database kept missing pages".into()))
    }

    /// Drops local frames that are not durable. If that fails, the local copy is rebuilt
    /// from the store; if that fails too, the next request rebuilds it.
    async fn discard_local(&mut self) -> Result<(), EngineError> {
        let Some(local) = self.local.take() else {
            return self.reload().await;
        };
        let mut attempt = local.discard_unshipped();
        for _ in 0..MAX_FETCH_ROUNDS {
            match attempt {
                Ok(local) => {
                    self.local = Some(local);
                    return Ok(());
                }
                Err((EngineError::PagesMissing(_), reopen)) => {
                    let wanted = reopen.take_wanted();
                    let pages = self.fetch_page_bytes(&wanted).await?;
                    for (page_no, bytes) in pages {
                        reopen.pin(page_no, bytes);
                    }
                    attempt = reopen.open();
                }
                Err(_) => break,
            }
        }
        self.reload().await
    }

    /// Fetches the page groups holding `pages` from their chunk objects into the cache,
    /// and pins them to `local` (if given) for the transaction in progress.
    async fn fetch_pages(&self, local: Option<&LocalDb>, pages: &[u32]) -> Result<(), EngineError> {
        for (page_no, bytes) in self.fetch_page_bytes(pages).await? {
            if let Some(local) = local {
                local.pin(page_no, bytes);
            }
        }
        Ok(())
    }

    /// Fetches the page groups holding `pages` into the cache; returns every page fetched.
    async fn fetch_page_bytes(&self, pages: &[u32]) -> Result<Vec<(u32, Arc<[u8]>)>, EngineError> {
        let mut fetched = Vec::new();
        let view = self.view();
        let group = self.config.fetch_group_pages.clamp(1, view.pages_per_chunk.max(1));
        // (chunk index, first page index in chunk, page count)
        let mut ranges = BTreeSet::new();
        for &page_no in pages {
            if page_no == 0 || page_no > view.page_count {
                continue;
            }
            let idx = page_no - 1;
            let chunk = idx / view.pages_per_chunk;
            let first_in_chunk = chunk * view.pages_per_chunk;
            let start = (idx - first_in_chunk) / group * group;
            let count = group.min(view.page_count - first_in_chunk - start);
            ranges.insert((chunk, start, count));
        }
        let ranges: Vec<_> = ranges.into_iter().collect();
        let page_size = view.page_size as u64;
        for batch in ranges.chunks(self.config.fetch_concurrency.max(1)) {
            let fetches = batch.iter().map(|&(chunk, start, count)| {
                let key = view.chunks[chunk as usize].clone();
                let store = self.store.clone();
                async move {
                    let range = ByteRange { offset: start as u64 * page_size, length: count as u64 * page_size };
                    (key.clone(), store.get(&key, Some(range)).await)
                }
            });
            for ((chunk, start, count), (key, got)) in batch.iter().zip(join_all(fetches).await) {
                let Some(obj) = got? else {
                    return Err(EngineError::BaseGone(key.to_string()));
                };
                if obj.body.len() as u64 != *count as u64 * page_size {
                    return Err(EngineError::Corrupt(format!("chunk {key} is shorter than the manifest says")));
                }
                for i in 0..*count {
                    let bytes: Arc<[u8]> = obj.body[(i as u64 * page_size) as usize..((i + 1) as u64 * page_size) as usize].into();
                    let page_no = chunk * view.pages_per_chunk + start + i + 1;
                    self.cache.insert((key.clone(), start + i), bytes.clone());
                    fetched.push((page_no, bytes));
                }
            }
        }
        Ok(fetched)
    }

    /// Applies every log record after `applied_seq`, found by listing (used on open, where
    /// many records may be missing; fetches them concurrently).
    async fn replay_listed_log(&mut self) -> Result<(), EngineError> {
        let prefix = self.layout.log_prefix();
        let mut start_after = Some(self.layout.log_key(self.applied_seq));
        loop {
            let page = self.store.list(&prefix, start_after.as_deref(), MAX_LIST_LIMIT).await?;
            let mut seqs = Vec::with_capacity(page.objects.len());
            for m in &page.objects {
                match self.layout.log_seq_of(&m.key) {
                    Some(seq) => seqs.push(seq),
                    None => return Err(EngineError::Corrupt(format!("unexpected object {} in the log", m.key))),
                }
            }
            for chunk in seqs.chunks(self.config.fetch_concurrency.max(1)) {
                let fetches = chunk.iter().map(|seq| {
                    let key = self.layout.log_key(*seq);
                    let store = self.store.clone();
                    async move { store.get(&key, None).await }
                });
                let bodies = join_all(fetches).await;
                for (seq, body) in chunk.iter().zip(bodies) {
                    if *seq != self.applied_seq + 1 {
                        return Err(EngineError::Corrupt(format!(
                            "log record {} is missing (found {} next)",
                            self.applied_seq + 1,
                            seq
                        )));
                    }
                    let Some(obj) = body? else {
                        return Err(EngineError::Corrupt(format!("log record {seq} was listed but is gone")));
                    };
                    self.apply_record(*seq, &obj.body)?;
                }
            }
            match page.next_start_after {
                Some(next) => start_after = Some(next),
                None => {
                    self.listed_absent = Some(self.applied_seq + 1);
                    return Ok(());
                }
            }
        }
    }

    fn apply_record(&mut self, seq: u64, body: &[u8]) -> Result<(), EngineError> {
        let record = LogRecord::decode(body)?;
        if record.seq != seq {
            return Err(EngineError::Corrupt(format!("object for log record {seq} holds record {}", record.seq)));
        }
        self.apply_frames(seq, &record.frames, record.page_size, body.len() as u64)
    }

    fn apply_frames(&mut self, seq: u64, frames: &[Frame], page_size: u32, bytes: u64) -> Result<(), EngineError> {
        self.local_mut().apply_frames(frames, page_size)?;
        self.applied_seq = seq;
        let end = self.local().durable_frames();
        self.records.push((seq, end, bytes));
        Ok(())
    }

    /// Applies records other writers committed, then checks the manifest. Returns how many
    /// records were applied; 0 proves the local state was current during this call.
    pub async fn refresh(&mut self, stats: &mut ExecStats) -> Result<u64, EngineError> {
        let mut applied = 0;
        for round in 0.. {
            if round == MAX_MANIFEST_ROUNDS {
                return Err(EngineError::Corrupt(format!(
                    "the manifest covers log record {} but does not move this replica past it",
                    self.applied_seq + 1
                )));
            }
            // Absent at the LIST, which (like a GET) counts only if the manifest below is
            // unchanged: then no record after it can have existed and been collected.
            let listed_absent = round == 0 && self.listed_absent.take() == Some(self.applied_seq + 1);
            while !listed_absent {
                let seq = self.applied_seq + 1;
                match self.store.get(&self.layout.log_key(seq), None).await? {
                    Some(obj) => {
                        self.apply_record(seq, &obj.body)?;
                        applied += 1;
                    }
                    None => break,
                }
            }
            // Only after seeing the next record absent: if the manifest is still the one
            // we know, no checkpoint could have let GC delete that record, so "absent" is
            // real. If a newer checkpoint covers it, move onto that checkpoint and go on.
            if self.check_manifest(self.applied_seq + 1).await? {
                break;
            }
            applied += 1;
        }
        stats.records_applied += applied;
        self.validated_ms = now_millis();
        Ok(applied)
    }

    /// Looks at the manifest if it changed, rebasing onto a newer checkpoint. Returns false
    /// if a checkpoint now covers `seq` (so a log record at `seq` would never be read).
    async fn check_manifest(&mut self, seq: u64) -> Result<bool, EngineError> {
        let key = self.layout.manifest_key();
        let etag = self.store.head(&key).await?.map(|m| m.etag);
        if etag == self.seen_etag {
            return Ok(self.base.checkpoint_seq < seq);
        }
        let (m, etag) = Self::read_manifest(&self.store, &self.layout).await?;
        let covers = m.checkpoint_seq >= seq;
        self.seen_etag = etag.clone();
        if m.generation > self.base.generation {
            self.rebase(m, etag).await?;
        }
        Ok(!covers)
    }

    /// Moves local state onto a newer checkpoint: a fresh local database on its chunks,
    /// plus the frames of records after it that this replica already has.
    async fn rebase(&mut self, m: Manifest, etag: Option<String>) -> Result<(), EngineError> {
        let mut keep = Vec::new();
        let mut prev_end = 0;
        let mut page_size = m.page_size;
        if let Some(local) = &self.local {
            page_size = local.page_size();
            for &(seq, end, bytes) in &self.records {
                if seq > m.checkpoint_seq {
                    keep.push((seq, local.frames(prev_end + 1, end)?, bytes));
                }
                prev_end = end;
            }
        }
        self.base = m;
        self.base_etag = etag;
        self.records.clear();
        self.applied_seq = self.applied_seq.max(self.base.checkpoint_seq);
        self.local = None;
        self.local = Some(self.create_local().await?);
        for (seq, frames, bytes) in keep {
            self.apply_frames(seq, &frames, page_size, bytes)?;
        }
        Ok(())
    }

    /// Reloads everything from the newest manifest (after its objects were collected
    /// under an older one this replica was using).
    async fn reload(&mut self) -> Result<(), EngineError> {
        let (m, etag) = Self::read_manifest(&self.store, &self.layout).await?;
        self.seen_etag = etag.clone();
        self.records.clear();
        self.applied_seq = 0;
        self.local = None;
        self.rebase(m, etag).await?;
        self.replay_listed_log().await
    }

    /// Runs `statements` as one transaction and makes it durable before returning.
    pub async fn transact(&mut self, statements: &[Statement]) -> Result<TxResult, EngineError> {
        self.transact_group(vec![statements.to_vec()]).await.pop().expect("one result per request")
    }

    /// Runs several requests, each its own transaction, committing all their writes with
    /// one log record. Each request gets its own result; one failing does not fail others.
    pub async fn transact_group(&mut self, requests: Vec<Vec<Statement>>) -> Vec<Result<TxResult, EngineError>> {
        let work = requests.into_iter().map(Work::Transaction).collect();
        self.perform(work)
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
    pub async fn run_script(&mut self, steps: Vec<Step>) -> Result<(ScriptOutcome, ExecStats), EngineError> {
        let done = self.perform(vec![Work::Script(steps)]).await.pop().expect("one result per request")?;
        match done.reply {
            Reply::Script(outcome) => Ok((outcome, done.stats)),
            Reply::Transaction(_) => Err(EngineError::Internal("a script got a transaction's reply".into())),
        }
    }

    /// Runs several requests (a group), committing all their writes with one log record
    /// before any reply is returned. One request failing does not fail the others.
    pub async fn perform(&mut self, work: Vec<Work>) -> Vec<Result<Done, EngineError>> {
        let mut stats = ExecStats::default();
        let checked: Vec<Result<Shape, EngineError>> = work
            .iter()
            .map(|w| match w {
                Work::Transaction(stmts) => {
                    let kinds = stmts.iter().map(|s| check_statement(&s.sql)).collect::<Result<Vec<_>, _>>()?;
                    Ok(if kinds == [StatementKind::Read] { Shape::SingleRead } else { Shape::Other })
                }
                Work::Script(_) => Ok(Shape::Other),
            })
            .collect();
        let outcome = self.run_group(&work, &checked, &mut stats).await;
        if let Some(local) = &self.local {
            local.clear_pins();
        }
        // A LIST proves absence only within the request that made it.
        self.listed_absent = None;
        let outcomes = match outcome {
            Ok(outcomes) => outcomes,
            Err(e) => return work.iter().map(|_| Err(e.clone())).collect(),
        };
        outcomes
            .into_iter()
            .map(|o| {
                o.map(|reply| {
                    let mut s = stats;
                    s.rows_read = reply.statement_results().map(|r| r.rows_read).sum();
                    s.rows_written = reply.statement_results().map(|r| r.rows_written).sum();
                    Done { reply, stats: s }
                })
            })
            .collect()
    }

    async fn run_group(
        &mut self,
        requests: &[Work],
        checked: &[Result<Shape, EngineError>],
        stats: &mut ExecStats,
    ) -> Result<Vec<Outcome>, EngineError> {
        if self.local.is_none() {
            // An earlier rebase failed half-way: rebuild from the store.
            self.reload().await?;
        }
        let mut fetch_rounds = 0;
        let mut attempt = 1;
        while attempt <= self.config.max_commit_attempts {
            // Run every request locally, fetching missing pages and starting over as needed.
            let mut outcomes: Vec<Outcome> = Vec::with_capacity(requests.len());
            let mut missing = None;
            for (work, check) in requests.iter().zip(checked) {
                let outcome = match (check, work) {
                    (Err(e), _) => Err(e.clone()),
                    (Ok(shape), Work::Transaction(stmts)) => self.run_local(stmts, *shape).map(Reply::Transaction),
                    (Ok(_), Work::Script(steps)) => self.run_script_local(steps).map(Reply::Script),
                };
                if let Err(EngineError::PagesMissing(pages)) = &outcome {
                    missing = Some(pages.clone());
                    break;
                }
                outcomes.push(outcome);
            }
            if let Some(pages) = missing {
                self.discard_local().await?;
                fetch_rounds += 1;
                if fetch_rounds > MAX_FETCH_ROUNDS {
                    return Err(EngineError::Internal("transaction kept missing pages".into()));
                }
                let local = self.local.take().expect("present");
                let fetched = self.fetch_page_bytes(&pages).await;
                if let Ok(fetched) = &fetched {
                    for (page_no, bytes) in fetched {
                        local.pin(*page_no, bytes.clone());
                    }
                }
                self.local = Some(local);
                match fetched {
                    Ok(fetched) if fetched.is_empty() => {
                        return Err(EngineError::Corrupt(format!(
                            "pages {pages:?} are needed but are not part of checkpoint {}",
                            self.base.generation
                        )));
                    }
                    Ok(_) => continue,
                    Err(EngineError::BaseGone(_)) => {
                        self.reload().await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(Err(e)) = outcomes.iter().find(|o| matches!(o, Err(e) if !e.is_client_error())) {
                let e = e.clone();
                self.discard_local().await?;
                return Err(e);
            }

            let frames = self.local().unshipped_frames()?;
            if frames.is_empty() {
                let recent = now_millis() - self.validated_ms <= self.config.max_staleness_ms;
                let only_reads_ok = outcomes.iter().all(|o| o.is_ok());
                if (recent && only_reads_ok) || self.refresh(stats).await? == 0 {
                    return Ok(outcomes);
                }
                attempt += 1;
                stats.retries += 1;
                continue;
            }
            match self.publish(frames).await {
                Publish::Published => {
                    stats.records_committed += 1;
                    self.validated_ms = now_millis();
                    // The commit is durable and is acknowledged whatever happens next: a
                    // failed checkpoint only delays folding (and a broken local copy is
                    // rebuilt by the next request).
                    let _ = self.maybe_checkpoint().await;
                    return Ok(outcomes);
                }
                Publish::Stale => {
                    self.discard_local().await?;
                    self.refresh(stats).await?;
                    attempt += 1;
                    stats.retries += 1;
                }
                Publish::Unknown(why) => {
                    self.discard_local().await?;
                    return Err(EngineError::CommitUnknown(why));
                }
            }
        }
        Err(EngineError::Conflict { attempts: self.config.max_commit_attempts })
    }

    /// BEGIN, the statements, COMMIT, all locally (a single read runs on its own). Leaves
    /// no transaction open; a failure rolls back this request only.
    fn run_local(&mut self, statements: &[Statement], shape: Shape) -> Result<Vec<StatementResult>, EngineError> {
        let limits = self.config.limits;
        let local = self.local();
        local.start_request(&limits);
        // One read needs no explicit transaction (it is its own), and BEGIN and COMMIT
        // would cost two more statements to prepare on the hottest path.
        let explicit = shape != Shape::SingleRead;
        if explicit {
            local.exec_control("BEGIN").map_err(|e| local.missing_or(e))?;
        }
        let mut results = Vec::with_capacity(statements.len());
        let rollback = |local: &LocalDb, e: EngineError| {
            let e = local.missing_or(e);
            if local.in_transaction() {
                local.exec_control("ROLLBACK")?;
            }
            Err(e)
        };
        for s in statements {
            match local.execute(s, &limits) {
                Ok(r) => results.push(r),
                Err(e) => return rollback(local, e),
            }
            if local.in_transaction() != explicit {
                // A statement ended the transaction itself, or left one open (the guard
                // should have refused it). Its effects must never ship, and neither may
                // anything else of this group: failing the group discards all of it.
                return Err(EngineError::Internal("a statement changed the request's transaction".into()));
            }
        }
        if explicit {
            if let Err(e) = local.exec_control("COMMIT") {
                return rollback(local, e);
            }
        }
        let missed = local.take_wanted();
        if !missed.is_empty() {
            // turso read around a miss without failing: never trust such a result.
            return Err(EngineError::PagesMissing(missed));
        }
        Ok(results)
    }

    /// Runs a script's steps locally. Step failures are part of its outcome; an error that
    /// is not the client's (or pages to fetch) fails the whole script, and the caller
    /// discards its local effects. Leaves no transaction open.
    fn run_script_local(&mut self, steps: &[Step]) -> Result<ScriptOutcome, EngineError> {
        let limits = self.config.limits;
        let local = self.local();
        local.start_request(&limits);
        let mut outcomes: Vec<StepOutcome> = Vec::with_capacity(steps.len());
        let mut opened_at = None;
        let mut read_only_tx = false;
        let writes_refused = || {
            EngineError::NotAllowed("this is a read-only transaction (BEGIN READONLY); the statement may write".into())
        };
        for (i, step) in steps.iter().enumerate() {
            let autocommit = !local.in_transaction();
            if autocommit {
                read_only_tx = false;
            }
            if !step.condition.as_ref().is_none_or(|c| c.holds(&outcomes, autocommit)) {
                outcomes.push(StepOutcome::Skipped);
                continue;
            }
            let result = match &step.action {
                Action::Execute(statement) => check_script_statement(&statement.sql)
                    .and_then(|kind| if read_only_tx && kind == StatementKind::Write { Err(writes_refused()) } else { Ok(()) })
                    .and_then(|_| local.execute(statement, &limits))
                    .map(StepOutcome::Executed),
                Action::Sequence(sql) => local
                    .execute_sequence(sql, &limits, |text| match check_script_statement(text)? {
                        StatementKind::Write if read_only_tx => Err(writes_refused()),
                        _ => Ok(()),
                    })
                    .map(|()| StepOutcome::Sequenced),
                Action::Describe(sql) => local.describe(sql).map(StepOutcome::Described),
                Action::GetAutocommit => Ok(StepOutcome::Autocommit(autocommit)),
            };
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(e) => match local.missing_or(e) {
                    e if e.is_client_error() => StepOutcome::Failed(e),
                    e => {
                        if local.in_transaction() {
                            let _ = local.exec_control("ROLLBACK");
                        }
                        return Err(e);
                    }
                },
            };
            match (autocommit, local.in_transaction()) {
                (true, true) => {
                    opened_at = Some(i);
                    read_only_tx = matches!(&step.action, Action::Execute(s) if begins_read_only(&s.sql));
                }
                (_, false) => opened_at = None,
                (false, true) => {}
            }
            outcomes.push(outcome);
        }
        if local.in_transaction() {
            local.exec_control("ROLLBACK").map_err(|e| local.missing_or(e))?;
        }
        let missed = local.take_wanted();
        if !missed.is_empty() {
            return Err(EngineError::PagesMissing(missed));
        }
        Ok(ScriptOutcome { steps: outcomes, rolled_back_from: opened_at })
    }

    /// Makes `frames` durable as log record `applied_seq + 1`.
    async fn publish(&mut self, frames: Vec<Frame>) -> Publish {
        let seq = self.applied_seq + 1;
        let mut nonce = [0u8; 16];
        random_bytes(&mut nonce);
        let frame_total = self.local().durable_frames() + frames.len() as u64;
        let body = LogRecord { seq, page_size: self.local().page_size(), nonce, frames }.encode();
        let key = self.layout.log_key(seq);

        let mut landed = false;
        let mut last_error: Option<StoreError> = None;
        for attempt in 1..=self.config.put_resolve_attempts.max(1) {
            match self.store.put(&key, body.clone(), PutCondition::CreateOnly).await {
                Ok(PutOutcome::Stored(_)) => {
                    landed = true;
                    break;
                }
                Ok(PutOutcome::PreconditionFailed) if attempt == 1 => return Publish::Stale,
                // An earlier attempt failed ambiguously: the record there may be ours.
                Ok(PutOutcome::PreconditionFailed) => match self.read_back(&key, &body).await {
                    Ok(Some(true)) => {
                        landed = true;
                        break;
                    }
                    Ok(_) => return Publish::Stale,
                    Err(e) => last_error = Some(e),
                },
                Err(e) => {
                    last_error = Some(e);
                    match self.read_back(&key, &body).await {
                        Ok(Some(true)) => {
                            landed = true;
                            break;
                        }
                        Ok(Some(false)) => return Publish::Stale,
                        Ok(None) => {} // did not land: PUT again
                        Err(e) => last_error = Some(e),
                    }
                }
            }
        }
        if !landed {
            let why = last_error.map(|e| e.to_string()).unwrap_or_else(|| "record not stored".into());
            return Publish::Unknown(why);
        }
        // The fence: the record must be one that readers will read.
        let base_before = self.base.generation;
        match self.check_manifest(seq).await {
            Ok(true) if self.base.generation == base_before => {
                self.local_mut().mark_durable(frame_total);
                self.applied_seq = seq;
                let end = self.local().durable_frames();
                self.records.push((seq, end, body.len() as u64));
                Publish::Published
            }
            // A newer checkpoint that does not cover `seq` was published meanwhile and local
            // state was rebased onto it (dropping the unshipped frames): the record is
            // durable and will be read, so apply it on the new base.
            Ok(true) => match LogRecord::decode(&body) {
                Ok(record) => match self.apply_frames(seq, &record.frames, record.page_size, body.len() as u64) {
                    Ok(()) => Publish::Published,
                    Err(e) => Publish::Unknown(e.to_string()),
                },
                Err(e) => Publish::Unknown(e.to_string()),
            },
            // A checkpoint already covers `seq`: this writer was a zombie and its record
            // sits where GC already deleted history. Nobody will read it; remove it.
            Ok(false) => {
                let _ = self.store.delete(&key).await;
                Publish::Stale
            }
            Err(EngineError::Storage(e)) => Publish::Unknown(format!("record stored but the fence check failed: {e}")),
            Err(e) => Publish::Unknown(e.to_string()),
        }
    }

    /// `Some(true)` if `key` holds exactly `body`, `Some(false)` if it holds something
    /// else, `None` if absent.
    async fn read_back(&self, key: &str, body: &[u8]) -> Result<Option<bool>, StoreError> {
        Ok(self.store.get(key, None).await?.map(|obj| obj.body == body))
    }

    fn log_since_checkpoint(&self) -> (u64, u64) {
        let records = self.records.iter().filter(|r| r.0 > self.base.checkpoint_seq);
        records.fold((0, 0), |(n, b), r| (n + 1, b + r.2))
    }

    async fn maybe_checkpoint(&mut self) -> Result<(), EngineError> {
        let (n, bytes) = self.log_since_checkpoint();
        if n >= self.config.checkpoint_records.max(1) || bytes >= self.config.checkpoint_bytes {
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Folds the log since the base checkpoint into new chunk objects and moves the
    /// manifest by compare-and-swap; deletes garbage older than the retention window.
    /// Returns false if another checkpoint won the race (nothing is lost either way).
    pub async fn checkpoint(&mut self) -> Result<bool, EngineError> {
        if self.seen_etag != self.base_etag || self.applied_seq == self.base.checkpoint_seq {
            return Ok(false);
        }
        let (dirty, db_size) = self.local().durable_pages()?;
        let old = self.view();
        let page_size = self.local().page_size();
        let ppc = self.base.pages_per_chunk;
        let page_count = if db_size > 0 { db_size } else { old.page_count };
        let chunk_count = page_count.div_ceil(ppc);
        let generation = self.base.generation + 1;
        let mut nonce = [0u8; 6];
        random_bytes(&mut nonce);
        let nonce = hex::encode(nonce);

        let mut chunks: Vec<String> = self.base.chunks.iter().take(chunk_count as usize).cloned().collect();
        let mut new_chunks: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let touched: BTreeSet<u32> = dirty.keys().map(|p| (p - 1) / ppc).filter(|c| *c < chunk_count).collect();
        let mut superseded = Vec::new();
        for c in touched.iter().copied() {
            let first = c * ppc + 1;
            let last = ((c + 1) * ppc).min(page_count);
            // Old pages of this chunk that the log did not replace.
            let needed: Vec<u32> =
                (first..=last).filter(|p| !dirty.contains_key(p) && old.page_key(*p).is_some()).collect();
            let mut old_pages = BTreeMap::new();
            if !needed.is_empty() {
                let key = old.chunks[c as usize].clone();
                let len = (last.min(old.page_count) - first + 1) as u64 * page_size as u64;
                let Some(obj) = self.store.get(&key, Some(ByteRange { offset: 0, length: len })).await? else {
                    return Err(EngineError::BaseGone(key.to_string()));
                };
                for p in needed {
                    let at = ((p - first) as usize) * page_size as usize;
                    old_pages.insert(p, obj.body[at..at + page_size as usize].to_vec());
                }
            }
            let mut body = Vec::with_capacity(((last - first + 1) * page_size) as usize);
            for p in first..=last {
                match dirty.get(&p).or_else(|| old_pages.get(&p)) {
                    Some(page) => body.extend_from_slice(page),
                    None => body.resize(body.len() + page_size as usize, 0),
                }
            }
            let key = self.layout.chunk_key(generation, c, &nonce);
            if let Some(old_key) = self.base.chunks.get(c as usize) {
                superseded.push(old_key.clone());
            }
            if (c as usize) < chunks.len() {
                chunks[c as usize] = key;
            } else {
                chunks.push(key);
            }
            new_chunks.insert(c, body);
        }
        superseded.extend(self.base.chunks.iter().skip(chunk_count as usize).cloned());
        if chunks.len() != chunk_count as usize {
            return Err(EngineError::Internal("checkpoint left a chunk unassigned".into()));
        }

        for batch in new_chunks.iter().collect::<Vec<_>>().chunks(self.config.fetch_concurrency.max(1)) {
            let puts = batch.iter().map(|(c, body)| {
                let key = chunks[**c as usize].clone();
                let store = self.store.clone();
                let body = (*body).clone();
                async move { store.put(&key, body, PutCondition::CreateOnly).await }
            });
            for r in join_all(puts).await {
                if !matches!(r?, PutOutcome::Stored(_)) {
                    return Ok(false);
                }
            }
        }

        // Garbage older than the retention window is unreferenced by every manifest a
        // reader could still be using: delete it now, before the new manifest drops it.
        let now = now_millis();
        let (expired, mut garbage): (Vec<Garbage>, Vec<Garbage>) =
            self.base.garbage.iter().cloned().partition(|g| g.retired_ms + self.config.gc_retention_ms <= now);
        for g in &expired {
            let mut keys = g.chunks.clone();
            keys.extend((g.log_from..=g.log_to).map(|s| self.layout.log_key(s)));
            self.store.delete_many(&keys).await?;
        }
        garbage.push(Garbage {
            retired_ms: now,
            chunks: superseded,
            log_from: self.base.checkpoint_seq + 1,
            log_to: self.applied_seq,
        });
        let manifest = Manifest {
            version: Manifest::VERSION,
            generation,
            checkpoint_seq: self.applied_seq,
            page_size,
            page_count,
            pages_per_chunk: ppc,
            chunks,
            garbage,
        };
        let condition = match &self.base_etag {
            Some(etag) => PutCondition::EtagMatches(etag.clone()),
            None => PutCondition::CreateOnly,
        };
        let stored = match self.store.put(&self.layout.manifest_key(), manifest.encode(), condition).await {
            Ok(PutOutcome::Stored(meta)) => Some(meta.etag),
            Ok(PutOutcome::PreconditionFailed) => None,
            // Ambiguous: the next manifest check will tell; the new chunks may be live.
            Err(e) => return Err(e.into()),
        };
        let Some(etag) = stored else {
            let keys: Vec<String> = new_chunks.keys().map(|c| manifest.chunks[*c as usize].clone()).collect();
            let _ = self.store.delete_many(&keys).await;
            return Ok(false);
        };
        // The pages just written are hot: keep them cached under their new keys.
        for (c, body) in &new_chunks {
            let key: Arc<str> = Arc::from(manifest.chunks[*c as usize].as_str());
            for (i, page) in body.chunks(page_size as usize).enumerate() {
                self.cache.insert((key.clone(), i as u32), page.into());
            }
        }
        self.seen_etag = Some(etag.clone());
        self.rebase(manifest, Some(etag)).await?;
        Ok(true)
    }
}
