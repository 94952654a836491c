//! Reading the past: which commit was current at a time, the state after any commit inside
//! the history window (`as_of` reads, restores, forks), and restoring it in place.
//!
//! The state after commit `S` is the image of the newest checkpoint generation at or
//! before `S` (its history entry, or the manifest for the current one) with the log
//! records after it up to `S` applied. Generations and records are found by k-ary search,
//! [`SEARCH_FAN_OUT`] objects at a time (Workers allow six R2 calls in flight); commit
//! times sort in log order, so the same search finds a commit by time.

use futures::future::join_all;

use crate::bookmark::Bookmark;
use crate::chunk_file::CheckpointView;
use crate::error::EngineError;
use crate::log_record::{Frame, LogRecord, Snapshot, SnapshotOrigin, TIMED_HEADER_LEN};
use crate::store::ByteRange;
use crate::value::ExecStats;

use super::commit::Publish;
use super::{Database, Image, Mode};

/// Objects one search round reads at once.
const SEARCH_FAN_OUT: u64 = 6;

/// A state is served from history only if its chunks stay out of GC's reach for at least
/// this long (the whole read must finish first): commits closer than this to the old
/// edge of the window are refused. Shorter windows use a quarter of their length.
pub const HISTORY_EDGE_MARGIN_MS: f64 = 60.0 * 60.0 * 1000.0;

/// What history spans now: every commit from `from` to `head` can be read, restored and
/// forked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryWindow {
    pub from: Bookmark,
    pub from_ms: u64,
    pub head: Bookmark,
    pub head_ms: u64,
}

/// The outcome of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The state before the restore (restore it to undo the restore).
    pub previous: Bookmark,
    /// The commit whose state was restored.
    pub restored: Bookmark,
    /// The restore's own commit.
    pub bookmark: Bookmark,
}

/// What a history search orders by.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// Generations whose checkpoint is at or before this log position.
    GenerationSeq(u64),
    /// Generations whose checkpoint was committed at or before this time.
    GenerationTime(u64),
    /// Log records committed at or before this time.
    RecordTime(u64),
}

/// A checkpoint image history starts from.
struct PastBase {
    checkpoint_seq: u64,
    view: CheckpointView,
}

impl Database {
    /// The history window, after proving the local state current.
    pub async fn history_window(&mut self) -> Result<HistoryWindow, EngineError> {
        self.catch_up().await?;
        Ok(HistoryWindow {
            from: Bookmark(self.history_from_seq()),
            from_ms: self.base.history_from_ms,
            head: Bookmark(self.applied_seq),
            head_ms: self.last_commit_ms,
        })
    }

    /// The last commit at or before `at_ms` (ms since the Unix epoch).
    pub async fn commit_at(&mut self, at_ms: u64) -> Result<Bookmark, EngineError> {
        let window = self.history_window().await?;
        if at_ms >= window.head_ms {
            return Ok(window.head);
        }
        if self.history_from_seq() > 0 && at_ms < window.from_ms {
            return Err(EngineError::OutsideHistory(format!(
                "{at_ms} is before the history window, which starts at {} (commit {})",
                window.from_ms, window.from
            )));
        }
        // Records after the base checkpoint are known locally.
        if at_ms >= self.base.committed_ms {
            let seq = self
                .records
                .iter()
                .rev()
                .find(|r| r.meta.committed_ms <= at_ms)
                .map_or(self.base.checkpoint_seq, |r| r.meta.seq);
            return Ok(Bookmark(seq.max(self.history_from_seq())));
        }
        let (lo, hi) = self.generation_range();
        let generation = self.last_holding(Order::GenerationTime(at_ms), lo, hi).await?;
        let from = self.past_entry(generation).await?.0;
        let to = match generation + 1 == self.base.generation {
            true => self.base.checkpoint_seq,
            false => self.past_entry(generation + 1).await?.0,
        };
        // Record `to` was committed after `at_ms` (its generation was), record `from` not.
        let seq = if to > from + 1 { self.last_holding(Order::RecordTime(at_ms), from, to - 1).await? } else { from };
        Ok(Bookmark(seq.max(self.history_from_seq())))
    }

    /// A read-only database holding the state after commit `seq`, built from the store
    /// without changing anything in it. It answers read-only requests only.
    pub async fn past(&mut self, seq: u64) -> Result<Database, EngineError> {
        self.check_in_window(seq).await?;
        let base = self.past_base(seq).await?;
        let mut past = self.read_only_on(Image::read_only(base.view), seq);
        past.applied_seq = base.checkpoint_seq;
        past.local = Some(past.create_local().await.map_err(gone_from_history)?);
        let seqs: Vec<u64> = (base.checkpoint_seq + 1..=seq).collect();
        for batch in seqs.chunks(self.config.fetch_concurrency.max(1)) {
            let bodies = join_all(batch.iter().map(|s| {
                let (store, key) = (self.store.clone(), self.layout.log_key(*s));
                async move { store.get(&key, None).await }
            }))
            .await;
            for (s, body) in batch.iter().zip(bodies) {
                let Some(obj) = body? else {
                    return Err(EngineError::OutsideHistory(format!(
                        "log record {s} is no longer stored: that commit left the history window"
                    )));
                };
                let record = LogRecord::decode(&obj.body)?;
                if record.seq != *s {
                    return Err(EngineError::Corrupt(format!("object for log record {s} holds record {}", record.seq)));
                }
                past.apply_decoded(record, obj.body.len() as u64).await.map_err(gone_from_history)?;
            }
        }
        Ok(past)
    }

    /// A read-only database on `image` (nothing applied on it yet) that answers as the
    /// state after commit `seq`; it shares this one's store and page cache.
    pub(super) fn read_only_on(&self, image: Image, seq: u64) -> Database {
        Database {
            layout: self.layout.clone(),
            store: self.store.clone(),
            cache: self.cache.clone(),
            host: self.host.clone(),
            sleeper: self.sleeper.clone(),
            config: self.config,
            mode: Mode::Past { seq },
            local: None,
            base: self.base.clone(),
            base_etag: self.base_etag.clone(),
            base_seen_ms: self.base_seen_ms,
            image,
            entries: Default::default(),
            applied_seq: seq,
            records: Vec::new(),
            last_commit_ms: 0,
            unverified_records: false,
            validated_ms: f64::INFINITY,
            manifest_proof_ms: f64::NEG_INFINITY,
            seen_tail: None,
            scan_resumes_at: Default::default(),
        }
    }

    /// Makes the state after commit `seq` the current one, as a new commit (a snapshot
    /// record, fenced like any other). Writers that race it lose a normal commit race and
    /// run again on the restored state.
    pub async fn restore(&mut self, seq: u64) -> Result<Restored, EngineError> {
        let past = self.past(seq).await?;
        let (snapshot, frames, page_size) = past.as_snapshot(SnapshotOrigin::Restore { seq })?;
        drop(past);
        let (previous, bookmark) = self.commit_snapshot(snapshot, frames, page_size, false, Some(seq)).await?;
        Ok(Restored { previous, restored: Bookmark(seq), bookmark })
    }

    /// Publishes a snapshot record as the next commit, fenced like any other: a writer that
    /// wins the race first is caught up with, and the record goes after it (within the
    /// commit budget). With `only_if_empty` the database must still have no tables then.
    /// `source` is the commit the snapshot's content was read at: if the history moves past
    /// it before the record lands (the database was deleted, and its objects may be purged),
    /// nothing is committed. Returns the bookmarks of the state before and of the new commit.
    pub(super) async fn commit_snapshot(
        &mut self,
        snapshot: Snapshot,
        frames: Vec<Frame>,
        page_size: u32,
        only_if_empty: bool,
        source: Option<u64>,
    ) -> Result<(Bookmark, Bookmark), EngineError> {
        let started_ms = self.now_ms();
        let mut attempt = 1;
        loop {
            if let Some(source) = source.filter(|s| *s < self.history_from_seq()) {
                return Err(EngineError::OutsideHistory(format!(
                    "the database was deleted at {} while this operation ran on its state at {}: nothing was committed",
                    Bookmark(self.history_from_seq()),
                    Bookmark(source)
                )));
            }
            let previous = Bookmark(self.applied_seq);
            match self.publish_snapshot(snapshot.clone(), frames.clone(), page_size).await {
                Publish::Published => {
                    self.validated_ms = self.now_ms();
                    let _ = self.maybe_checkpoint().await;
                    return Ok((previous, Bookmark(previous.0 + 1)));
                }
                Publish::Stale => {
                    let elapsed = self.now_ms() - started_ms;
                    if attempt >= self.config.max_commit_attempts || elapsed >= self.config.commit_budget_ms {
                        return Err(EngineError::Conflict { attempts: attempt, elapsed_ms: elapsed.max(0.0) as u64 });
                    }
                    self.back_off(attempt).await;
                    attempt += 1;
                    self.discard_local().await?;
                    self.refresh(&mut ExecStats::default()).await?;
                    if only_if_empty {
                        self.refuse_if_not_empty().await?;
                    }
                }
                Publish::Unknown(why) => return Err(EngineError::CommitUnknown(why)),
                Publish::NotStored(e) => return Err(e),
            }
        }
    }

    /// This (past) state as a snapshot record's content: its image and the frames on top,
    /// the newest version of each page only.
    pub(super) fn as_snapshot(&self, origin: SnapshotOrigin) -> Result<(Snapshot, Vec<Frame>, u32), EngineError> {
        let local = self.local()?;
        let page_size = local.page_size();
        let (pages, size) = local.durable_pages()?;
        // Only the newest version of each page, in page order, the final size on the last
        // frame: a restore's record holds a state, not the steps to it.
        let mut frames: Vec<Frame> = pages
            .into_iter()
            .filter(|(page_no, _)| *page_no <= size)
            .map(|(page_no, page)| Frame { page_no, db_size_after: 0, page })
            .collect();
        if let Some(last) = frames.last_mut() {
            last.db_size_after = size;
        }
        let view = &self.image.view;
        let snapshot = Snapshot {
            page_count: view.page_count,
            pages_per_chunk: view.pages_per_chunk,
            chunks: view.chunks.iter().map(|k| k.to_string()).collect(),
            origin,
        };
        Ok((snapshot, frames, page_size))
    }

    /// Brings the local state up to the newest commit.
    pub(super) async fn catch_up(&mut self) -> Result<(), EngineError> {
        if self.local.is_none() {
            self.reload().await?;
        }
        if self.unverified_records {
            self.verify_records().await?;
        }
        self.refresh(&mut ExecStats::default()).await.map(|_| ())
    }

    /// Where history starts: the manifest says so, unless a purging deletion applied since
    /// moved it.
    pub(super) fn history_from_seq(&self) -> u64 {
        let deleted_at = self
            .records
            .iter()
            .rev()
            .find(|r| matches!(r.meta.kind, super::RecordKind::Snapshot { ends_history: true, .. }))
            .map(|r| r.meta.seq);
        self.base.history_from_seq.max(deleted_at.unwrap_or(0))
    }

    /// Refuses commits outside the window, and those close enough to its old edge that GC
    /// could take their objects during the read.
    async fn check_in_window(&mut self, seq: u64) -> Result<(), EngineError> {
        let window = self.history_window().await?;
        if seq > window.head.0 {
            return Err(EngineError::InvalidBookmark(format!(
                "{} names a commit after the newest one ({}): it belongs to another database, or to one deleted since",
                Bookmark(seq),
                window.head
            )));
        }
        if seq < window.from.0 {
            return Err(EngineError::OutsideHistory(format!(
                "{} is before the history window, which starts at {}",
                Bookmark(seq),
                window.from
            )));
        }
        // The empty database needs no objects; the newest checkpoint's are not garbage.
        if seq == 0 || seq >= self.base.checkpoint_seq {
            return Ok(());
        }
        // Everything the state needs was retired by a checkpoint after this commit, so no
        // earlier than its commit time; GC keeps it for a retention window after that.
        let retention = self.retention_ms();
        let margin = self.history_edge_margin_ms();
        let committed_ms = self.commit_time(seq).await?;
        if (committed_ms as f64) < self.now_ms() - retention + margin {
            return Err(EngineError::OutsideHistory(format!(
                "{} is too close to the end of the history window (kept {} ms; commits older than {} ms are not served)",
                Bookmark(seq),
                retention as u64,
                (retention - margin) as u64
            )));
        }
        Ok(())
    }

    /// The commit time of log record `seq` (0 for the empty database).
    async fn commit_time(&self, seq: u64) -> Result<u64, EngineError> {
        if seq == 0 {
            return Ok(0);
        }
        let range = ByteRange { offset: 0, length: TIMED_HEADER_LEN };
        match self.store.get(&self.layout.log_key(seq), Some(range)).await? {
            Some(obj) => Ok(LogRecord::decode_header(&obj.body)?.committed_ms),
            None => Err(EngineError::OutsideHistory(format!(
                "log record {seq} is no longer stored: that commit left the history window"
            ))),
        }
    }

    /// Generations whose history entry may be read: from the oldest whose state can still
    /// be rebuilt to the one before the current manifest.
    fn generation_range(&self) -> (u64, u64) {
        // Generation 0 (the empty database before any checkpoint) has no entry to lose.
        let lo = match self.base.gc_floor {
            0 | 1 => 0,
            floor => self.base.entries_from.max(floor - 1),
        };
        (lo, self.base.generation.saturating_sub(1).max(lo))
    }

    /// The checkpoint image the state after `seq` is rebuilt from.
    async fn past_base(&self, seq: u64) -> Result<PastBase, EngineError> {
        if seq >= self.base.checkpoint_seq {
            return Ok(PastBase { checkpoint_seq: self.base.checkpoint_seq, view: CheckpointView::from_manifest(&self.base) });
        }
        let (lo, hi) = self.generation_range();
        let generation = self.last_holding(Order::GenerationSeq(seq), lo, hi).await?;
        if generation == 0 {
            return Ok(PastBase { checkpoint_seq: 0, view: CheckpointView { page_size: 0, page_count: 0, pages_per_chunk: 1, chunks: Vec::new() } });
        }
        let entry = self
            .entry(generation)
            .await?
            .ok_or_else(|| EngineError::OutsideHistory(format!("checkpoint {generation} left the history window")))?;
        let map = self.map_of(&entry).await?;
        Ok(PastBase {
            checkpoint_seq: entry.checkpoint_seq,
            view: CheckpointView {
                page_size: entry.page_size,
                page_count: entry.page_count,
                pages_per_chunk: entry.pages_per_chunk,
                chunks: map.iter().map(|k| std::sync::Arc::from(k.as_str())).collect(),
            },
        })
    }

    /// The checkpoint position and commit time of a past generation (generation 0: the
    /// empty database).
    async fn past_entry(&self, generation: u64) -> Result<(u64, u64), EngineError> {
        if generation == 0 {
            return Ok((0, 0));
        }
        match self.entry(generation).await? {
            Some(e) => Ok((e.checkpoint_seq, e.committed_ms)),
            None => Err(EngineError::OutsideHistory(format!("checkpoint {generation} left the history window"))),
        }
    }

    /// Whether `point` (a generation or a log position) comes at or before what `order`
    /// asks for.
    async fn holds(&self, order: Order, point: u64) -> Result<bool, EngineError> {
        Ok(match order {
            Order::GenerationSeq(seq) => self.past_entry(point).await?.0 <= seq,
            Order::GenerationTime(ms) => self.past_entry(point).await?.1 <= ms,
            Order::RecordTime(ms) => self.commit_time(point).await? <= ms,
        })
    }

    /// The last point in `lo..=hi` that holds, given that points hold up to some point and
    /// not after it. Refuses if `lo` itself does not hold (the answer left the window).
    async fn last_holding(&self, order: Order, mut lo: u64, mut hi: u64) -> Result<u64, EngineError> {
        if !self.holds(order, lo).await? {
            return Err(EngineError::OutsideHistory(match order {
                Order::GenerationSeq(seq) => format!("{} left the history window", Bookmark(seq)),
                Order::GenerationTime(ms) | Order::RecordTime(ms) => format!("{ms} is before the history window"),
            }));
        }
        while lo < hi {
            let span = hi - lo;
            let mut points: Vec<u64> = (1..=SEARCH_FAN_OUT).map(|i| lo + (span * i).div_ceil(SEARCH_FAN_OUT)).collect();
            points.dedup();
            let found = join_all(points.iter().map(|p| self.holds(order, *p))).await;
            let mut new_hi = hi;
            for (p, holds) in points.iter().zip(found) {
                if holds? {
                    lo = lo.max(*p);
                } else {
                    new_hi = new_hi.min(*p - 1);
                }
            }
            hi = new_hi.max(lo);
        }
        Ok(lo)
    }
}

/// A checkpoint object missing while rebuilding the past means that state left the window.
fn gone_from_history(e: EngineError) -> EngineError {
    match e {
        EngineError::BaseGone(what) => EngineError::OutsideHistory(format!("an object of that state was collected: {what}")),
        e => e,
    }
}
