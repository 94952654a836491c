//! Keeping the local database in step with the store: applying log records other writers
//! committed, proving freshness, and moving onto newer checkpoints.
//!
//! The rule that keeps replicas from answering from a torn state: a log record read by GET
//! or LIST is trusted only once a manifest read made after it shows no checkpoint covering
//! it. Below a published checkpoint, GC may delete a record and a zombie writer may create
//! its key again (its own fence check then fails, but its record may stay behind); only
//! the manifest tells the real record from such a one. Records a newer checkpoint covers
//! are dropped by moving onto that checkpoint, so whatever remains is real.

use std::future::Future;
use std::rc::Rc;

use futures::future::join_all;

use crate::error::EngineError;
use crate::layout::Layout;
use crate::chunk_file::CheckpointView;
use crate::log_record::{Frame, LogRecord, Snapshot, SnapshotOrigin};
use crate::manifest::{ForkedFrom, Manifest};
use crate::store::{Object, ObjectStore, MAX_LIST_LIMIT};
use crate::value::ExecStats;

use super::{AppliedRecord, Database, Image, RecordMeta};

/// Times one refresh may move onto a newer checkpoint before giving up.
const MAX_MANIFEST_ROUNDS: u32 = 16;

/// The shortest GC retention window with which a probe runs its GET and HEAD at once
/// (shorter windows, as in tests with retention 0, probe one after the other).
pub const MIN_RETENTION_FOR_CONCURRENT_PROBE_MS: f64 = 60_000.0;

/// What the request in progress already saw after the applied log record: the LIST made
/// while opening, or a probe issued ahead of a read ([`Database::probe_ahead`]). The
/// request's freshness probe then makes fewer calls.
#[derive(Debug, Clone)]
pub(super) enum SeenTail {
    /// No record at `seq`: the probe needs no GET, and perhaps no HEAD either.
    Absent {
        seq: u64,
        /// The manifest's etag seen at the same time (inner `None`: no manifest), kept only
        /// when the observation ended well inside the GC retention window. One listing, or
        /// a GET and HEAD issued at once, shows the record absent and the manifest as it
        /// was together, so it proves the state current as the concurrent GET and HEAD of
        /// a probe do (the same argument, ARCHITECTURE.md), and the probe needs no HEAD.
        /// Outer `None`: the probe checks the manifest after (as a sequential probe does),
        /// unless time proves the absence ([`Database::time_proves_absence`]).
        manifest_etag: Option<Option<String>>,
        /// When the observation began: the instant the state is proven current from.
        observed_ms: f64,
    },
    /// The record at `seq`, fetched ahead: the probe applies it without a GET (trusted,
    /// like any record, only once a manifest read after it shows no checkpoint covering it).
    Record { seq: u64, object: Object },
}

/// What a probe issued ahead saw, and when it started.
pub(super) struct SeenAhead {
    started_ms: f64,
    /// None if a call failed: the probe proper makes it again.
    tail: Option<SeenTail>,
}

/// How one pass over a listing of the log ended.
enum Listed {
    /// Every record after the applied one was applied.
    Complete,
    /// Record `missing` was not there: collected since the manifest was read, or lost.
    Gap { missing: u64, why: String },
}

/// What a freshness probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProbeResult {
    /// Nothing was committed that the local state lacks: answers computed before the probe
    /// reflect a state that was current during it.
    Current,
    /// Newer commits were applied: answers must be computed again.
    Moved,
}

pub(super) async fn read_manifest(
    store: &Rc<dyn ObjectStore>,
    layout: &Layout,
) -> Result<(Manifest, Option<String>), EngineError> {
    Ok(match store.get(&layout.manifest_key(), None).await? {
        Some(obj) => (Manifest::decode(&obj.body)?, Some(obj.meta.etag)),
        None => (Manifest::empty(), None),
    })
}

impl Database {
    /// Applies every log record after `applied_seq`, found by listing (used on open, where
    /// many records may be missing; fetches them concurrently). The listing runs over the
    /// database's folder from the applied record on, so it also shows the manifest (which
    /// sorts after `log/`) and its etag: see [`SeenTail`].
    ///
    /// A record missing from the listing (or gone before its GET) is corruption only if
    /// the manifest still says it should be there: between the manifest read this replica
    /// stands on and the listing, another isolate may have folded it into a checkpoint and
    /// GC collected it (at once with no retention window). Then the replica moves onto that
    /// checkpoint and lists again.
    pub(super) async fn replay_listed_log(&mut self) -> Result<(), EngineError> {
        let started = self.now_ms();
        for _ in 0..MAX_MANIFEST_ROUNDS {
            let Listed::Gap { missing, why } = self.list_and_apply(started).await? else { return Ok(()) };
            if self.check_manifest(missing).await? {
                return Err(EngineError::Corrupt(why));
            }
        }
        Err(EngineError::Corrupt(format!(
            "the log after the manifest was collected {MAX_MANIFEST_ROUNDS} times while this replica listed it"
        )))
    }

    /// One pass of [`Self::replay_listed_log`]: lists from the applied record on and applies
    /// what it finds, up to a gap.
    async fn list_and_apply(&mut self, started: f64) -> Result<Listed, EngineError> {
        let manifest_key = self.layout.manifest_key();
        let log_prefix = self.layout.log_prefix();
        let mut start_after = Some(self.layout.log_key(self.applied_seq));
        // The manifest's etag as listed (`None`: the listing went past where it would be).
        let mut manifest_etag = None;
        loop {
            let page = self.store.list(self.layout.prefix(), start_after.as_deref(), MAX_LIST_LIMIT).await?;
            let mut seqs = Vec::with_capacity(page.objects.len());
            let mut past_the_log = false;
            for m in &page.objects {
                if let Some(seq) = self.layout.log_seq_of(&m.key) {
                    seqs.push(seq);
                    continue;
                }
                if m.key.starts_with(&log_prefix) {
                    return Err(EngineError::Corrupt(format!("unexpected object {} in the log", m.key)));
                }
                match m.key.cmp(&manifest_key) {
                    // No such objects today; whatever sorts between the log and the
                    // manifest is no concern of this listing.
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => manifest_etag = Some(m.etag.clone()),
                    std::cmp::Ordering::Greater => {}
                }
                past_the_log = true;
                break;
            }
            for batch in seqs.chunks(self.config.fetch_concurrency.max(1)) {
                let fetches = batch.iter().map(|seq| {
                    let key = self.layout.log_key(*seq);
                    let store = self.store.clone();
                    async move { store.get(&key, None).await }
                });
                let bodies = join_all(fetches).await;
                for (seq, body) in batch.iter().zip(bodies) {
                    let missing = self.applied_seq + 1;
                    if *seq != missing {
                        return Ok(Listed::Gap { missing, why: format!("log record {missing} is missing (found {seq} next)") });
                    }
                    let Some(obj) = body? else {
                        return Ok(Listed::Gap { missing, why: format!("log record {seq} was listed but is gone") });
                    };
                    self.apply_record(*seq, &obj.body).await?;
                }
            }
            match page.next_start_after {
                Some(next) if !past_the_log => start_after = Some(next),
                _ => {
                    let in_time = self.probe_concurrently() && self.now_ms() - started < self.collection_delay_ms() / 2.0;
                    if in_time && manifest_etag == self.base_etag {
                        // The manifest the listing showed is the one this replica stands on:
                        // no checkpoint covered the records listed with it, so they are real.
                        self.unverified_records = false;
                    }
                    self.seen_tail = Some(SeenTail::Absent {
                        seq: self.applied_seq + 1,
                        manifest_etag: in_time.then_some(manifest_etag),
                        observed_ms: started,
                    });
                    return Ok(Listed::Complete);
                }
            }
        }
    }

    /// Applies a record read from the store (not yet trusted: see the module comment).
    async fn apply_record(&mut self, seq: u64, body: &[u8]) -> Result<(), EngineError> {
        let record = LogRecord::decode(body)?;
        if record.seq != seq {
            return Err(EngineError::Corrupt(format!("object for log record {seq} holds record {}", record.seq)));
        }
        self.unverified_records = true;
        self.apply_decoded(record, body.len() as u64).await
    }

    /// Applies a record this replica wrote itself (trusted: it just published it).
    pub(super) async fn apply_encoded(&mut self, body: &[u8]) -> Result<(), EngineError> {
        let record = LogRecord::decode(body)?;
        self.apply_decoded(record, body.len() as u64).await
    }

    /// Applies a decoded record: its frames, on the image of its snapshot if it has one.
    pub(super) async fn apply_decoded(&mut self, record: LogRecord, bytes: u64) -> Result<(), EngineError> {
        let meta = RecordMeta::of(&record, bytes);
        match &record.snapshot {
            None => self.apply_frames(meta, &record.frames, record.page_size),
            Some(snapshot) => self.apply_snapshot(meta, snapshot, &record.frames, record.page_size).await,
        }
    }

    /// Rebuilds the local database on a snapshot record's image, then applies its frames.
    /// The records before it stay listed (a checkpoint folds and retires them) but none of
    /// their frames are in the new local database.
    async fn apply_snapshot(
        &mut self,
        meta: RecordMeta,
        snapshot: &Snapshot,
        frames: &[Frame],
        page_size: u32,
    ) -> Result<(), EngineError> {
        let forked_from = match &snapshot.origin {
            SnapshotOrigin::Fork { parent, seq } => Some(ForkedFrom { parent: parent.clone(), seq: *seq }),
            // A purge begins the database anew; restores and imports keep it a fork.
            SnapshotOrigin::Delete { purge: true } => None,
            _ => self.image.forked_from.clone(),
        };
        let image = Image { view: snapshot_view(snapshot, page_size), snapshot_seq: Some(meta.seq), forked_from };
        let old_image = std::mem::replace(&mut self.image, image);
        let fresh = match self.create_local().await {
            Ok(fresh) => fresh,
            Err(e) => {
                self.image = old_image;
                return Err(e);
            }
        };
        self.local = Some(fresh);
        for r in &mut self.records {
            r.end_frame = 0;
        }
        if let Err(e) = self.apply_frames(meta, frames, page_size) {
            self.local = None;
            return Err(e);
        }
        Ok(())
    }

    pub(super) fn apply_frames(&mut self, meta: RecordMeta, frames: &[Frame], page_size: u32) -> Result<(), EngineError> {
        let local = self.local_mut()?;
        local.apply_frames(frames, page_size)?;
        let end_frame = local.durable_frames();
        self.note_applied(meta, end_frame);
        Ok(())
    }

    /// The record is now the newest one reflected locally, ending at WAL frame `end_frame`.
    pub(super) fn note_applied(&mut self, meta: RecordMeta, end_frame: u64) {
        self.applied_seq = meta.seq;
        // Version-1 records carry no time; keep the newest time known.
        self.last_commit_ms = self.last_commit_ms.max(meta.committed_ms);
        self.records.push(AppliedRecord { meta, end_frame });
    }

    /// Applies records other writers committed, then checks the manifest: proves the
    /// local state current, or brings it up to date.
    pub(super) async fn refresh(&mut self, stats: &mut ExecStats) -> Result<ProbeResult, EngineError> {
        let mut freshness = ProbeResult::Current;
        for round in 0.. {
            if round == MAX_MANIFEST_ROUNDS {
                return Err(EngineError::Corrupt(format!(
                    "the manifest covers log record {} but does not move this replica past it",
                    self.applied_seq + 1
                )));
            }
            // Absent at the LIST or at a probe issued ahead, which (like a GET) counts only
            // if the manifest below is unchanged: then no record after it can have existed
            // and been collected.
            let next = self.applied_seq + 1;
            let seen = if round == 0 { self.seen_tail.take() } else { None };
            // The manifest's etag, when a HEAD ran together with the GET that found the
            // next record absent, or the same LIST showed it (one round trip; see
            // `probe_concurrently`).
            let (seen_absent, mut etag_with_absence, mut record_ahead, mut absent_since) = match seen {
                Some(SeenTail::Absent { seq, manifest_etag, observed_ms }) if seq == next => (true, manifest_etag, None, observed_ms),
                Some(SeenTail::Record { seq, object }) if seq == next => (false, None, Some(object), f64::NEG_INFINITY),
                _ => (false, None, None, f64::NEG_INFINITY),
            };
            if !seen_absent {
                let mut first = true;
                loop {
                    let seq = self.applied_seq + 1;
                    let key = self.layout.log_key(seq);
                    let get_started = self.now_ms();
                    let (record, etag) = match record_ahead.take() {
                        // Fetched ahead; the GET after it still goes out with a HEAD.
                        Some(object) => (Some(object), None),
                        // Time will prove an absence: the GET alone.
                        None if first && self.time_proves_absence() => {
                            first = false;
                            (self.store.get(&key, None).await?, None)
                        }
                        None if first && self.probe_concurrently() => {
                            first = false;
                            let manifest_key = self.layout.manifest_key();
                            let (record, head) = futures::join!(self.store.get(&key, None), self.store.head(&manifest_key));
                            let in_time = self.now_ms() - get_started < self.collection_delay_ms() / 2.0;
                            (record?, in_time.then_some(head?.map(|m| m.etag)))
                        }
                        None => (self.store.get(&key, None).await?, None),
                    };
                    match record {
                        Some(obj) => {
                            self.apply_record(seq, &obj.body).await?;
                            stats.records_applied += 1;
                            freshness = ProbeResult::Moved;
                        }
                        None => {
                            etag_with_absence = etag;
                            absent_since = get_started;
                            break;
                        }
                    }
                }
            }
            // Only after seeing the next record absent: if the manifest is still the one
            // we know, no checkpoint could have let GC delete that record, so "absent" is
            // real. If a newer checkpoint covers it, move onto that checkpoint and go on.
            let seq = self.applied_seq + 1;
            if etag_with_absence.is_none() && self.time_proves_absence() {
                break;
            }
            let current = match etag_with_absence {
                Some(etag) => self.check_manifest_etag(seq, etag).await?,
                None => self.check_manifest(seq).await?,
            };
            if current {
                self.manifest_proof_ms = absent_since;
                break;
            }
            freshness = ProbeResult::Moved;
        }
        self.validated_ms = self.now_ms();
        Ok(freshness)
    }

    /// True if time alone proves that a log record found absent now was never created, so
    /// that a probe needs no manifest HEAD and a commit no fence check. The state was
    /// proven current by an observation that read the manifest and began at
    /// `manifest_proof_ms`, and every record after it since is this replica's own commit:
    /// any next record another writer created came after that instant, and no record is
    /// deleted sooner than the GC window after it ([`Self::collection_delay_ms`]). So while
    /// less than half the window has passed since (the other half absorbs clock skew
    /// between isolates, whose clocks time the deletion), "absent" is real. Records applied
    /// from the store since (unverified until a manifest check) end this, and so does the
    /// half window: a replica reads the manifest at least that often, so its base's chunks
    /// never age out under it.
    pub(super) fn time_proves_absence(&self) -> bool {
        self.probe_concurrently()
            && !self.unverified_records
            && self.now_ms() - self.manifest_proof_ms < self.collection_delay_ms() / 2.0
    }

    /// Starts the freshness probe of a read before the read runs (None when probes here
    /// run one call after the other): its GET and HEAD are in flight while the read runs,
    /// so a read that has to fetch a page waits one round trip, not two. The future owns
    /// what it needs (it borrows nothing: `use<>`), so it makes progress while the read
    /// borrows the database; [`Self::accept_seen_ahead`] takes its result.
    pub(super) fn probe_ahead(&self) -> Option<impl Future<Output = SeenAhead> + use<>> {
        if !self.probe_concurrently() {
            return None;
        }
        let store = self.store.clone();
        let absent_seq = self.applied_seq + 1;
        let key = self.layout.log_key(absent_seq);
        let manifest_key = self.layout.manifest_key();
        let started_ms = self.now_ms();
        // Checked again when the probe is taken (`refresh`): a GET that ends too late needs
        // the HEAD after all.
        let with_head = !self.time_proves_absence();
        Some(async move {
            let (record, head) = if with_head {
                let (record, head) = futures::join!(store.get(&key, None), store.head(&manifest_key));
                (record, Some(head))
            } else {
                (store.get(&key, None).await, None)
            };
            let absent = |manifest_etag| SeenTail::Absent { seq: absent_seq, manifest_etag, observed_ms: started_ms };
            let tail = match (record, head) {
                (Ok(None), Some(Ok(head))) => Some(absent(Some(head.map(|m| m.etag)))),
                (Ok(None), None) => Some(absent(None)),
                (Ok(Some(object)), _) => Some(SeenTail::Record { seq: absent_seq, object }),
                _ => None,
            };
            SeenAhead { started_ms, tail }
        })
    }

    /// Keeps what a probe issued ahead saw for this request's [`Self::refresh`]
    /// (`seen_tail` is cleared when the request ends).
    pub(super) fn accept_seen_ahead(&mut self, seen: SeenAhead) {
        // A slow probe still proves the record absent, but its HEAD is too far from its
        // GET: the manifest is then checked after, as in a sequential probe.
        let in_time = self.now_ms() - seen.started_ms < self.collection_delay_ms() / 2.0;
        self.seen_tail = seen.tail.map(|t| match t {
            SeenTail::Absent { seq, manifest_etag, observed_ms } => {
                SeenTail::Absent { seq, manifest_etag: manifest_etag.filter(|_| in_time), observed_ms }
            }
            record => record,
        });
    }

    /// True if a freshness probe may issue the GET of the next record and the manifest
    /// HEAD at once. A record absent at the GET could have been created and collected
    /// before it only if a checkpoint covering it was published after the HEAD saw the
    /// old manifest and a whole retention window passed before the GET; the two run within
    /// one probe, so that cannot happen while the probe is shorter than the window (half of
    /// it, to allow for clock skew between isolates). ARCHITECTURE.md has the argument.
    fn probe_concurrently(&self) -> bool {
        self.collection_delay_ms() >= MIN_RETENTION_FOR_CONCURRENT_PROBE_MS
    }

    /// Checks the manifest after records were applied by a call that then failed.
    pub(super) async fn verify_records(&mut self) -> Result<(), EngineError> {
        self.check_manifest(self.applied_seq + 1).await.map(|_| ())
    }

    /// Looks at the manifest, moving onto a newer checkpoint if there is one. Returns
    /// false if a checkpoint now covers `seq` (so a log record at `seq` would never be
    /// read). Afterwards every applied record is trusted.
    pub(super) async fn check_manifest(&mut self, seq: u64) -> Result<bool, EngineError> {
        let etag = self.store.head(&self.layout.manifest_key()).await?.map(|m| m.etag);
        self.check_manifest_etag(seq, etag).await
    }

    /// [`Self::check_manifest`] given the manifest's etag from a HEAD already made.
    async fn check_manifest_etag(&mut self, seq: u64, etag: Option<String>) -> Result<bool, EngineError> {
        if etag == self.base_etag {
            self.unverified_records = false;
            return Ok(self.base.checkpoint_seq < seq);
        }
        let (m, etag) = read_manifest(&self.store, &self.layout).await?;
        let covers = m.checkpoint_seq >= seq;
        if m.generation > self.base.generation {
            self.rebase(m, etag).await?;
        } else if m.generation == self.base.generation {
            self.base_etag = etag;
        } else {
            return Err(EngineError::Corrupt(format!(
                "the manifest went back from generation {} to {}",
                self.base.generation, m.generation
            )));
        }
        self.unverified_records = false;
        Ok(!covers)
    }

    /// Moves local state onto a newer checkpoint: a fresh local database on its chunks,
    /// plus the frames of records after it that this replica already has. The current
    /// local database is replaced only once the new one is built.
    pub(super) async fn rebase(&mut self, m: Manifest, etag: Option<String>) -> Result<(), EngineError> {
        struct Kept {
            record: AppliedRecord,
            frames: Vec<Frame>,
        }
        // A snapshot record this replica applied after the new checkpoint: the local
        // database does not depend on any checkpoint before it, so it stays as it is.
        if self.local.is_some() && self.image.snapshot_seq.is_some_and(|s| s > m.checkpoint_seq) {
            self.records.retain(|r| r.meta.seq > m.checkpoint_seq);
            self.base = m;
            self.base_seen_ms = self.now_ms();
            self.base_etag = etag;
            return Ok(());
        }
        let mut keep = Vec::new();
        let mut page_size = m.page_size;
        if let Some(local) = &self.local {
            page_size = local.page_size();
            let mut prev_end = 0;
            for record in &self.records {
                if record.meta.seq > m.checkpoint_seq {
                    keep.push(Kept { record: *record, frames: local.frames(prev_end + 1, record.end_frame)? });
                }
                prev_end = record.end_frame;
            }
        }
        self.start_over_on(m, etag).await?;
        for kept in keep {
            if let Err(e) = self.apply_frames(kept.record.meta, &kept.frames, page_size) {
                // The new base with part of the records is a consistent older state, but
                // it is simpler to start over from the store than to reason about it.
                self.local = None;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Reloads everything from the newest manifest (after objects of an older checkpoint
    /// this replica was using were collected, or its local database was lost).
    pub(super) async fn reload(&mut self) -> Result<(), EngineError> {
        if let super::Mode::Past { seq } = self.mode {
            // A past state is never replaced by the newest one.
            self.local = None;
            return Err(EngineError::OutsideHistory(format!(
                "an object of the state after {} is gone: that commit left the history window",
                crate::bookmark::Bookmark(seq)
            )));
        }
        let (m, etag) = read_manifest(&self.store, &self.layout).await?;
        // The state goes back to the checkpoint, older than the one proven current at
        // `validated_ms`: until the replay below proves it current again, no read may
        // stand on it, or a staleness-bounded read could miss commits it had seen.
        self.validated_ms = f64::NEG_INFINITY;
        self.manifest_proof_ms = f64::NEG_INFINITY;
        self.start_over_on(m, etag).await?;
        self.replay_listed_log().await
    }

    /// Starts local state over on checkpoint `m`: a fresh local database on its chunks and
    /// no records after it. If the new local database cannot be built, the image stays
    /// the old one (so do base and records) and the error is returned.
    async fn start_over_on(&mut self, m: Manifest, etag: Option<String>) -> Result<(), EngineError> {
        let old_image = std::mem::replace(&mut self.image, Image::of_manifest(&m));
        self.cache_embedded_pages(&m);
        let fresh = match self.create_local().await {
            Ok(fresh) => fresh,
            Err(e) => {
                self.image = old_image;
                return Err(e);
            }
        };
        self.base = m;
        self.base_seen_ms = self.now_ms();
        self.base_etag = etag;
        self.local = Some(fresh);
        self.records.clear();
        self.applied_seq = self.base.checkpoint_seq;
        self.last_commit_ms = self.base.committed_ms;
        Ok(())
    }
}

/// The pages of a snapshot record's image, as the local database reads them.
pub(super) fn snapshot_view(snapshot: &Snapshot, page_size: u32) -> CheckpointView {
    CheckpointView {
        page_size,
        page_count: snapshot.page_count,
        pages_per_chunk: snapshot.pages_per_chunk,
        chunks: snapshot.chunks.iter().map(|k| std::sync::Arc::from(k.as_str())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use futures::executor::block_on;

    use super::super::{Database, DbConfig, DbContext, ReadFrom};
    use crate::layout::Layout;
    use crate::mem_store::{Fault, MemStore, OpKind, ScriptedFaults};
    use crate::value::{SqlValue, Statement};

    /// A replica that reloads from the manifest and fails to replay the log after it holds
    /// an older state than the one it proved current: a staleness-bounded read must probe,
    /// not answer from it.
    #[test]
    fn a_reload_that_stops_short_proves_nothing() {
        let store = Rc::new(MemStore::new());
        let config = DbConfig { max_staleness_ms: 60_000.0, ..DbConfig::default() };
        let mut db = block_on(Database::open(DbContext::new(store.clone()), Layout::new("", "r"), config)).expect("open");
        block_on(db.transact(&[Statement::new("CREATE TABLE t (x)")])).expect("create");
        for _ in 0..3 {
            block_on(db.transact(&[Statement::new("INSERT INTO t VALUES (1)")])).expect("insert");
        }
        assert!(db.fresh_enough(ReadFrom::WithinMs(60_000.0), db.now_ms()), "a commit proves its state current");

        store.set_faults(Some(Box::new(ScriptedFaults(|op, key: &str| match op {
            OpKind::Get if key.contains("/log/") => Fault::ErrorBefore,
            _ => Fault::None,
        }))));
        assert!(block_on(db.reload()).is_err(), "the replay stops at the first log record");
        store.set_faults(None);
        assert!(!db.fresh_enough(ReadFrom::WithinMs(60_000.0), db.now_ms()), "the older state is not proven current");

        let count = block_on(db.transact(&[Statement::new("SELECT count(*) FROM t")])).expect("read");
        assert_eq!(count.results[0].rows, vec![vec![SqlValue::Integer(3)]]);
    }
}
