//! A durable database: the local turso database kept in step with the commit log in the
//! object store. This is where the commit protocol lives (see ARCHITECTURE.md):
//!
//! * A request runs optimistically on local state as one transaction.
//! * If it wrote, its frames become log record `applied + 1`, created by a create-only PUT.
//!   Only one writer can create a given record: that is the single-writer fence. After the
//!   PUT lands, the manifest is checked so that a writer stalled across a checkpoint and a
//!   GC (a zombie) never acknowledges a record that no reader will ever read.
//! * If it only read, the next log record and the manifest are probed (in that order) to
//!   prove the local state was current at some moment during the request.
//! * If another writer got there first, the local frames are discarded, the missed records
//!   are applied, and the transaction runs again (bounded), else a conflict is reported.

use std::rc::Rc;

use futures::future::join_all;

use crate::error::EngineError;
use crate::guard::check_statement;
use crate::io::random_bytes;
use crate::layout::Layout;
use crate::local::{ExecLimits, LocalDb};
use crate::log_record::{Frame, LogRecord};
use crate::manifest::Manifest;
use crate::store::{ObjectStore, PutCondition, PutOutcome, StoreError, MAX_LIST_LIMIT};
use crate::value::{ExecStats, Statement, StatementResult};

#[derive(Debug, Clone, Copy)]
pub struct DbConfig {
    /// Times a transaction runs before a lost commit race is reported as a conflict.
    pub max_commit_attempts: u32,
    /// Times an ambiguous PUT is resolved (read back, re-PUT) before giving up.
    pub put_resolve_attempts: u32,
    /// Log records fetched at once when catching up (Workers allow 6 open connections).
    pub fetch_concurrency: usize,
    pub limits: ExecLimits,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig { max_commit_attempts: 5, put_resolve_attempts: 4, fetch_concurrency: 6, limits: ExecLimits::default() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TxResult {
    pub results: Vec<StatementResult>,
    pub stats: ExecStats,
}

/// What is known about the manifest object.
#[derive(Debug, Clone, Default)]
struct KnownManifest {
    /// `None`: the manifest did not exist when last looked at.
    etag: Option<String>,
    checkpoint_seq: u64,
}

enum Publish {
    /// Durable and acknowledged-safe.
    Published,
    /// Another writer owns this sequence number (or we were a zombie): catch up and retry.
    Stale,
    /// Could not determine whether the record landed.
    Unknown(String),
}

pub struct Database {
    layout: Layout,
    store: Rc<dyn ObjectStore>,
    config: DbConfig,
    /// Always `Some` between calls; taken only while being replaced.
    local: Option<LocalDb>,
    /// Highest log record reflected in `local` (all durable).
    applied_seq: u64,
    manifest: KnownManifest,
}

impl Database {
    /// Rebuilds the database from the object store alone.
    pub async fn open(store: Rc<dyn ObjectStore>, layout: Layout, config: DbConfig) -> Result<Self, EngineError> {
        let manifest = match store.get(&layout.manifest_key(), None).await? {
            Some(obj) => {
                let m = Manifest::decode(&obj.body)?;
                if m.checkpoint_seq > 0 {
                    return Err(EngineError::Corrupt(format!(
                        "database has a checkpoint at log record {}, which this build cannot load",
                        m.checkpoint_seq
                    )));
                }
                KnownManifest { etag: Some(obj.meta.etag), checkpoint_seq: m.checkpoint_seq }
            }
            None => KnownManifest::default(),
        };
        let mut db = Database {
            applied_seq: manifest.checkpoint_seq,
            layout,
            store,
            config,
            local: Some(LocalDb::create()?),
            manifest,
        };
        db.replay_listed_log().await?;
        let mut stats = ExecStats::default();
        db.refresh(&mut stats).await?;
        Ok(db)
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn local(&self) -> &LocalDb {
        self.local.as_ref().expect("local database present between calls")
    }

    fn local_mut(&mut self) -> &mut LocalDb {
        self.local.as_mut().expect("local database present between calls")
    }

    fn discard_local(&mut self) -> Result<(), EngineError> {
        let local = self.local.take().expect("local database present between calls");
        self.local = Some(local.discard_unshipped()?);
        Ok(())
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
                None => return Ok(()),
            }
        }
    }

    fn apply_record(&mut self, seq: u64, body: &[u8]) -> Result<(), EngineError> {
        let record = LogRecord::decode(body)?;
        if record.seq != seq {
            return Err(EngineError::Corrupt(format!("object for log record {seq} holds record {}", record.seq)));
        }
        self.local_mut().apply_frames(&record.frames, record.page_size)?;
        self.applied_seq = seq;
        Ok(())
    }

    /// Applies records other writers committed, then checks the manifest. Returns how many
    /// records were applied; 0 proves the local state was current during this call.
    pub async fn refresh(&mut self, stats: &mut ExecStats) -> Result<u64, EngineError> {
        let mut applied = 0;
        loop {
            let seq = self.applied_seq + 1;
            match self.store.get(&self.layout.log_key(seq), None).await? {
                Some(obj) => {
                    self.apply_record(seq, &obj.body)?;
                    applied += 1;
                }
                None => break,
            }
        }
        // Only after seeing the next record absent: if the manifest is still the one we
        // know, no checkpoint could have let GC delete that record, so "absent" is real.
        self.check_manifest(self.applied_seq + 1).await?;
        stats.records_applied += applied;
        Ok(applied)
    }

    /// Reads the manifest if it changed. Returns false if a checkpoint now covers `seq`
    /// (so a log record at `seq` would never be read).
    async fn check_manifest(&mut self, seq: u64) -> Result<bool, EngineError> {
        let key = self.layout.manifest_key();
        let head = self.store.head(&key).await?;
        let etag = head.map(|m| m.etag);
        if etag == self.manifest.etag {
            return Ok(self.manifest.checkpoint_seq < seq);
        }
        let Some(obj) = self.store.get(&key, None).await? else {
            return Err(EngineError::Corrupt("the manifest disappeared".into()));
        };
        let m = Manifest::decode(&obj.body)?;
        if m.checkpoint_seq > self.applied_seq {
            return Err(EngineError::Corrupt(format!(
                "a checkpoint at log record {} is ahead of this replica ({}); this build cannot load checkpoints",
                m.checkpoint_seq, self.applied_seq
            )));
        }
        self.manifest = KnownManifest { etag: Some(obj.meta.etag), checkpoint_seq: m.checkpoint_seq };
        Ok(m.checkpoint_seq < seq)
    }

    /// Runs `statements` as one transaction and makes it durable before returning.
    pub async fn transact(&mut self, statements: &[Statement]) -> Result<TxResult, EngineError> {
        for s in statements {
            check_statement(&s.sql)?;
        }
        let mut stats = ExecStats::default();
        for attempt in 1..=self.config.max_commit_attempts {
            if attempt > 1 {
                stats.retries += 1;
            }
            let results = match self.run_local(statements) {
                Ok(results) => results,
                Err(e) if e.is_client_error() => {
                    // The error might come from a stale snapshot (say, a unique key another
                    // writer already deleted): only report it if the snapshot was current.
                    if self.refresh(&mut stats).await? == 0 {
                        return Err(e);
                    }
                    continue;
                }
                Err(e) => {
                    self.discard_local()?;
                    return Err(e);
                }
            };
            let frames = self.local().unshipped_frames()?;
            if frames.is_empty() {
                if self.refresh(&mut stats).await? == 0 {
                    return Ok(finish(results, stats));
                }
                continue;
            }
            match self.publish(frames).await {
                Publish::Published => {
                    stats.records_committed += 1;
                    return Ok(finish(results, stats));
                }
                Publish::Stale => {
                    self.discard_local()?;
                    self.refresh(&mut stats).await?;
                }
                Publish::Unknown(why) => {
                    self.discard_local()?;
                    return Err(EngineError::CommitUnknown(why));
                }
            }
        }
        Err(EngineError::Conflict { attempts: self.config.max_commit_attempts })
    }

    /// BEGIN, the statements, COMMIT, all locally. Leaves no transaction open.
    fn run_local(&mut self, statements: &[Statement]) -> Result<Vec<StatementResult>, EngineError> {
        let limits = self.config.limits;
        let local = self.local();
        local.exec_control("BEGIN")?;
        let mut results = Vec::with_capacity(statements.len());
        for s in statements {
            match local.execute(s, &limits) {
                Ok(r) => results.push(r),
                Err(e) => {
                    if local.in_transaction() {
                        local.exec_control("ROLLBACK")?;
                    }
                    return Err(e);
                }
            }
            if !local.in_transaction() {
                // A statement ended the transaction itself; whatever it committed is
                // local only and is dropped.
                self.discard_local()?;
                return Err(EngineError::NotAllowed("a statement ended the request's transaction".into()));
            }
        }
        if let Err(e) = local.exec_control("COMMIT") {
            if local.in_transaction() {
                local.exec_control("ROLLBACK")?;
            }
            return Err(e);
        }
        Ok(results)
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
        match self.check_manifest(seq).await {
            Ok(true) => {
                self.local_mut().mark_durable(frame_total);
                self.applied_seq = seq;
                Publish::Published
            }
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
}

fn finish(results: Vec<StatementResult>, mut stats: ExecStats) -> TxResult {
    stats.rows_read = results.iter().map(|r| r.rows_read).sum();
    stats.rows_written = results.iter().map(|r| r.rows_written).sum();
    TxResult { results, stats }
}
