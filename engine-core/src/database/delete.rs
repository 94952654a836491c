//! Deleting a database: its state becomes empty, as one fenced commit (a snapshot record
//! with an empty image), and a checkpoint publishes that at once so that listings, which
//! read manifests only, leave the database out. By default the states before stay in the
//! history: restoring the bookmark before the deletion undoes it, until the window ends and
//! [`Database::expire_deletion`] (the Worker's scheduled sweep) purges them. A purging
//! deletion also ends the history there and deletes the objects of the old state at once,
//! except its log records: readers and writers prove a record absent by time (no record is
//! deleted sooner than the GC window after its creation), so those stay until the GC window
//! after the deletion has passed; then [`Database::sweep_purged_log`] (the scheduled sweep)
//! deletes them, or the orphan sweep of a name used again does. Either way what forks still use
//! stays (their references name it), and so does the manifest: it is the compare-and-swap
//! anchor that fences writers which have not seen the deletion yet, and the name can be
//! used again at once.

use std::collections::{BTreeSet, HashSet};

use crate::bookmark::Bookmark;
use crate::error::EngineError;
use crate::layout::{Layout, UploadId};
use crate::log_record::{Snapshot, SnapshotOrigin};
use crate::store::{PutCondition, PutOutcome, MAX_LIST_LIMIT};

use crate::manifest::Deletion;

use super::replay::read_manifest;

use super::{Database, RecordKind};

/// Store calls (LIST and DELETE) one deletion's purge may make. A Worker invocation may make
/// 1,000 calls on the free plan; what is left over, calling delete again finishes.
pub const PURGE_CALL_BUDGET: u32 = 400;

/// Checkpoint attempts that publish the deletion before the call gives up on it.
const CHECKPOINT_ATTEMPTS: u32 = 3;

/// Uploads begun this long before the deletion may belong to an import still running:
/// the purge leaves them (an import that began before the deletion never publishes after it).
const UPLOAD_GRACE_MS: u64 = 10 * 60 * 1000;

/// How much of the old state a deletion takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    /// The states before stay restorable until they leave the history window.
    KeepHistory,
    /// The history ends at the deletion and the old state's objects are deleted now.
    Purge,
}

/// What a deletion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The deletion's own commit: the database is empty there.
    pub bookmark: Bookmark,
    /// The state before the deletion: restoring it undoes the deletion (while it is in the
    /// history window; never after a purge).
    pub previous: Bookmark,
    /// False if the deletion's checkpoint could not be published yet: the database is
    /// empty either way, but listings show it until a later checkpoint (or deleting again).
    pub published: bool,
    /// What the purge did, for a purging deletion.
    pub purge: Option<Purged>,
}

/// What a purge deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Objects of the old state this call deleted.
    pub objects_deleted: u64,
    /// Chunks of the old state kept because forks still use them.
    pub chunks_kept_for_forks: u64,
    /// False if the purge stopped at [`PURGE_CALL_BUDGET`] or could not publish its
    /// checkpoint yet: delete again to finish (nothing of the old state is readable either way).
    pub complete: bool,
    /// The old state's log records stay until the GC window after the deletion has passed
    /// (the scheduled sweep deletes them then); false once they are deleted too.
    pub log_records_left: bool,
}

/// Where one purge stands: what it may still call, what it did.
struct Purge {
    calls_left: u32,
    deleted: u64,
}

impl Purge {
    fn spend(&mut self) -> bool {
        if self.calls_left == 0 {
            return false;
        }
        self.calls_left -= 1;
        true
    }
}

impl Database {
    /// Empties the database as one commit; `mode` says whether its history goes too.
    /// Concurrent writers lose a normal commit race and run again on the empty database.
    pub async fn delete(&mut self, mode: DeleteMode) -> Result<Deleted, EngineError> {
        self.catch_up().await?;
        self.delete_caught_up(mode, false).await
    }

    /// What GC does for a database in use, for one deleted longer ago than the retention
    /// window (nothing runs on it any more, so nothing else would take its old objects):
    /// a purging deletion. `None` if it is not deleted any more, or not yet long enough; a
    /// write that races it (a name used again) wins, and nothing is purged.
    pub async fn expire_deletion(&mut self) -> Result<Option<Deleted>, EngineError> {
        self.catch_up().await?;
        let Some(deletion) = self.current_deletion() else {
            return Ok(None);
        };
        let already_purged = self.history_from_seq() >= deletion.seq;
        if already_purged || (deletion.committed_ms as f64) + self.retention_ms() > self.now_ms() {
            return Ok(None);
        }
        match self.delete_caught_up(DeleteMode::Purge, true).await {
            Ok(purged) => Ok(Some(purged)),
            // A writer used the name since: the database lives again.
            Err(EngineError::NotEmpty(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What the scheduled sweep does for a purged database whose log records before the
    /// deletion are still there (see the module's note), once the GC window after the
    /// deletion has passed: deletes them and notes it in the manifest, so that listings
    /// skip the database from then on. Returns the records deleted, `None` if there is
    /// nothing to do yet (or a writer used the name since: its own sweeps take them).
    pub async fn sweep_purged_log(&mut self) -> Result<Option<u64>, EngineError> {
        self.catch_up().await?;
        let pending = self.base.purge_log_pending();
        let Some(deletion) = self.current_deletion().filter(|d| pending == Some(*d)) else {
            return Ok(None);
        };
        if !self.purged_log_due(self.now_ms()) {
            return Ok(None);
        }
        let mut purge = Purge { calls_left: PURGE_CALL_BUDGET, deleted: 0 };
        if !self.purge_log(&mut purge, deletion.seq).await? || !self.note_log_purged(deletion.seq).await? {
            return Ok(None);
        }
        Ok(Some(purge.deleted))
    }

    /// Notes in the manifest that the log records before `seq` are deleted: a rewrite of
    /// the same generation by compare-and-swap (only this field changes, and only upward,
    /// so no etag repeats). False if the manifest moved meanwhile.
    async fn note_log_purged(&mut self, seq: u64) -> Result<bool, EngineError> {
        let (mut m, etag) = read_manifest(&self.store, &self.layout).await?;
        let Some(etag) = etag.filter(|_| m.generation == self.base.generation && m.log_purged_before < seq) else {
            return Ok(false);
        };
        m.log_purged_before = seq;
        match self.store.put(&self.layout.manifest_key(), &m.encode(), PutCondition::EtagMatches(etag)).await? {
            PutOutcome::Stored(meta) => {
                self.base.log_purged_before = seq;
                self.base_etag = Some(meta.etag);
                Ok(true)
            }
            PutOutcome::PreconditionFailed => Ok(false),
        }
    }

    /// The deletion the newest state is, if it is one.
    pub(super) fn current_deletion(&self) -> Option<Deletion> {
        match self.records.last() {
            Some(r) => matches!(r.meta.kind, RecordKind::Snapshot { deletes: true, .. })
                .then_some(Deletion { seq: r.meta.seq, committed_ms: r.meta.committed_ms }),
            None => self.base.deleted.filter(|d| d.seq == self.applied_seq),
        }
    }

    /// [`Self::delete`] on a caught-up database; with `only_if_empty`, a database that has
    /// tables by the time the record would land (a racing writer used the name) is refused.
    async fn delete_caught_up(&mut self, mode: DeleteMode, only_if_empty: bool) -> Result<Deleted, EngineError> {
        // Databases whose chunks the old state used (a fork's parents): a purge drops our
        // references there once nothing of ours needs them. When the database was deleted
        // before (a deletion expiring), its map is empty: the chunks its deletion's
        // checkpoint retired, and the parent it was forked from, still name them.
        let retired = self.base.retired.iter().flat_map(|g| g.chunks.iter().cloned());
        let chunks = self.image.view.chunks.iter().map(|k| k.to_string()).chain(self.base.chunks.iter().cloned()).chain(retired);
        let mut owners: BTreeSet<String> = BTreeSet::new();
        for key in chunks {
            if let Some(owner) = Layout::owner_prefix_of(&key).filter(|o| *o != self.layout.prefix()) {
                owners.insert(owner.to_string());
            }
        }
        if let Some(origin) = &self.image.forked_from {
            owners.insert(self.layout.sibling(&origin.parent).prefix().to_string());
        }
        let page_size = self.local()?.page_size();
        let empty = Snapshot {
            page_count: 0,
            pages_per_chunk: self.view().pages_per_chunk.max(1),
            chunks: Vec::new(),
            origin: SnapshotOrigin::Delete { purge: mode == DeleteMode::Purge },
        };
        let (previous, bookmark) = self.commit_snapshot(empty, Vec::new(), page_size, only_if_empty, None).await?;
        // The deletion is committed: from here on a failure only leaves its publication (and
        // the purge) unfinished; the answer says so, and deleting again finishes it.
        let deleted_ms = self.last_commit_ms;
        let published = self.publish_deletion(bookmark.0).await.unwrap_or(false);
        let purge = match mode {
            DeleteMode::KeepHistory => None,
            DeleteMode::Purge => {
                let mut purge = Purge { calls_left: PURGE_CALL_BUDGET, deleted: 0 };
                let mut kept_for_forks = 0;
                let complete = published
                    && self.purge(&mut purge, deleted_ms, &mut kept_for_forks).await.unwrap_or(false)
                    && self.drop_references(&mut purge, &owners).await.unwrap_or(false);
                // With no GC window (tests, or a deployment that keeps nothing) the log
                // records go now too.
                let log_deleted = complete
                    && self.purged_log_due(self.now_ms())
                    && self.purge_log(&mut purge, bookmark.0).await.unwrap_or(false)
                    && self.note_log_purged(bookmark.0).await.unwrap_or(false);
                let log_records_left = !log_deleted;
                Some(Purged { objects_deleted: purge.deleted, chunks_kept_for_forks: kept_for_forks, complete, log_records_left })
            }
        };
        Ok(Deleted { bookmark, previous, published, purge })
    }

    /// Publishes the checkpoint of the deletion at `deletion` (or a later one); true once
    /// the manifest covers it.
    async fn publish_deletion(&mut self, deletion: u64) -> Result<bool, EngineError> {
        for _ in 0..CHECKPOINT_ATTEMPTS {
            if self.base.checkpoint_seq >= deletion {
                return Ok(true);
            }
            self.checkpoint().await?;
            self.catch_up().await?;
        }
        Ok(self.base.checkpoint_seq >= deletion)
    }

    /// Deletes what the state before the published deletion used: chunks of generations up
    /// to the manifest's that it does not name, uploads older than the deletion (less the
    /// grace) and history entries before where history now starts (its log records wait:
    /// [`Self::purge_log`]). Returns false if the call budget ran out first.
    async fn purge(&self, purge: &mut Purge, deleted_ms: u64, kept_for_forks: &mut u64) -> Result<bool, EngineError> {
        if !purge.spend() {
            return Ok(false);
        }
        let forks = self.fork_referenced_chunks().await?;
        let live: HashSet<&str> = self.base.chunks.iter().map(String::as_str).collect();
        let generation = self.base.generation;
        let entries_from = self.base.entries_from;
        let layout = &self.layout;
        let chunk_doomed = |key: &str| match layout.chunk_generation_of(key) {
            // Later generations may be a checkpoint in progress.
            Some(g) => g <= generation,
            None => false,
        };
        let upload_doomed =
            |key: &str| UploadId::started_ms_of(layout, key).is_none_or(|ms| ms + UPLOAD_GRACE_MS < deleted_ms);
        let entry_doomed = |key: &str| {
            key.strip_prefix(&layout.history_prefix()).and_then(|g| g.parse::<u64>().ok()).is_some_and(|g| g < entries_from)
        };
        let sets: [(String, &dyn Fn(&str) -> bool); 4] = [
            (layout.chunk_prefix(), &chunk_doomed),
            (layout.uploads_prefix(), &upload_doomed),
            (layout.upload_sessions_prefix(), &upload_doomed),
            (layout.history_prefix(), &entry_doomed),
        ];
        self.purge_listed(purge, sets, &live, &forks, kept_for_forks).await
    }

    /// Deletes the log records before the purging deletion at `deletion`. Returns false if
    /// the call budget ran out first.
    async fn purge_log(&self, purge: &mut Purge, deletion: u64) -> Result<bool, EngineError> {
        let layout = &self.layout;
        let record_doomed = |key: &str| layout.log_seq_of(key).is_some_and(|seq| seq < deletion);
        let sets: [(String, &dyn Fn(&str) -> bool); 1] = [(layout.log_prefix(), &record_doomed)];
        self.purge_listed(purge, sets, &HashSet::new(), &HashSet::new(), &mut 0).await
    }

    /// Lists each prefix and deletes the keys `doomed` picks, but for those the live map
    /// names and those forks use (counted in `kept_for_forks`).
    async fn purge_listed<const N: usize>(
        &self,
        purge: &mut Purge,
        sets: [(String, &dyn Fn(&str) -> bool); N],
        live: &HashSet<&str>,
        forks: &HashSet<String>,
        kept_for_forks: &mut u64,
    ) -> Result<bool, EngineError> {
        for (prefix, doomed) in sets {
            let mut after: Option<String> = None;
            loop {
                if !purge.spend() {
                    return Ok(false);
                }
                let page = self.store.list(&prefix, after.as_deref(), MAX_LIST_LIMIT).await?;
                let mut doomed_keys = Vec::new();
                for m in &page.objects {
                    if live.contains(m.key.as_str()) || !doomed(&m.key) {
                        continue;
                    }
                    if forks.contains(&m.key) {
                        *kept_for_forks += 1;
                    } else {
                        doomed_keys.push(m.key.clone());
                    }
                }
                if !doomed_keys.is_empty() {
                    if !purge.spend() {
                        return Ok(false);
                    }
                    self.store.delete_many(&doomed_keys).await?;
                    purge.deleted += doomed_keys.len() as u64;
                }
                match page.next_start_after {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Ok(true)
    }

    /// Deletes the references this database (as a fork) keeps on `owners`: nothing of its
    /// state uses their chunks any more. (Forks of this one keep references of their own.)
    async fn drop_references(&self, purge: &mut Purge, owners: &BTreeSet<String>) -> Result<bool, EngineError> {
        let me = self.parent_name();
        for owner in owners {
            let prefix = Layout::of_prefix(owner).fork_refs_of(&me);
            if !purge.spend() {
                return Ok(false);
            }
            let page = self.store.list(&prefix, None, MAX_LIST_LIMIT).await?;
            let keys: Vec<String> = page.objects.into_iter().map(|m| m.key).collect();
            if keys.is_empty() {
                continue;
            }
            if !purge.spend() {
                return Ok(false);
            }
            self.store.delete_many(&keys).await?;
            purge.deleted += keys.len() as u64;
        }
        Ok(true)
    }
}
