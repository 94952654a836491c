//! Garbage collection: deleting objects that neither a reader of an older checkpoint nor
//! the history window still needs. Two mechanisms:
//!
//! * **Retired garbage.** Each checkpoint records in its manifest (and then in its history
//!   entry) what it retired: the chunks it superseded and the log records it folded, with
//!   the time. A later checkpoint walks the generations from `gc_floor` on and deletes the
//!   garbage of each once it is older than the retention window (the longer of the GC
//!   and history retentions), then moves `gc_floor` past it. A chunk is kept if the new
//!   checkpoint uses it, a later restore brought it back, or a fork references it; only
//!   this database's own objects are ever deleted (a fork's map names its parent's).
//! * **Orphan sweep.** Objects nothing ever referenced (left by failed uploads, ambiguous
//!   PUTs, failed deletes) or that a zombie writer re-created below a checkpoint, found by
//!   listing at most once per sweep interval. A chunk of generation `g` is an orphan if
//!   `g`'s chunk map does not name it (each generation is swept once, while its history
//!   entry exists); a log record if GC already passed its position.

use std::collections::HashSet;

use crate::error::EngineError;
use crate::history_entry::ChunkMap;
use crate::log_record::LogRecord;
use crate::manifest::{Garbage, Revival};
use crate::store::MAX_LIST_LIMIT;

use super::Database;

/// How often a database's objects are swept for orphans (LIST is a class A operation).
pub const ORPHAN_SWEEP_INTERVAL_MS: f64 = 60.0 * 60.0 * 1000.0;

/// Generations whose garbage one checkpoint deletes at most (bounds its R2 calls).
const GENERATIONS_PER_PASS: u64 = 16;

/// Generations one sweep checks at most.
const GENERATIONS_PER_SWEEP: u64 = 64;

/// What a GC pass leaves for the next manifest.
pub(super) struct Collected {
    pub legacy: Vec<Garbage>,
    pub gc_floor: u64,
    pub entries_from: u64,
    pub history_from_seq: u64,
    pub history_from_ms: u64,
    pub revivals: Vec<Revival>,
}

/// Chunks that must outlive garbage listing them, found lazily (only when a pass has
/// chunks to delete).
struct Keepers<'a> {
    new_map: HashSet<&'a str>,
    forks: Option<HashSet<String>>,
    revived: Vec<(u64, HashSet<String>)>,
}

impl Database {
    /// Deletes garbage older than the retention window, up to a bound per pass. `new_map`
    /// is the chunk map about to be published. `None` if the base manifest turned out to be
    /// stale (a history entry it needs was collected by a newer checkpoint): the checkpoint
    /// has lost the race to that one.
    pub(super) async fn collect_garbage(&self, now: f64, new_map: &[String]) -> Result<Option<Collected>, EngineError> {
        let retention = self.retention_ms();
        let may_delete = self.proven_current_for_gc(now);
        let (expired, legacy): (Vec<Garbage>, Vec<Garbage>) =
            self.base.garbage.iter().cloned().partition(|g| may_delete && g.retired_ms + retention <= now);
        let mut keepers = Keepers { new_map: new_map.iter().map(String::as_str).collect(), forks: None, revived: Vec::new() };
        for g in &expired {
            self.delete_garbage(g, 0, &mut keepers).await?;
        }

        let old_floor = self.base.gc_floor.max(1);
        let mut floor = old_floor;
        let mut history_from = (self.base.history_from_seq, self.base.history_from_ms);
        while may_delete && floor <= self.base.generation && floor < old_floor + GENERATIONS_PER_PASS {
            let Some(entry) = self.entry(floor).await? else {
                let manifest = self.store.head(&self.layout.manifest_key()).await?;
                if manifest.map(|m| m.etag) != self.base_etag {
                    return Ok(None);
                }
                // A checkpoint that then lost its manifest race collected this generation
                // already: it deletes an entry only after the garbage the entry lists.
                floor += 1;
                continue;
            };
            if let Some(g) = &entry.retired {
                if g.retired_ms + retention > now {
                    break;
                }
                self.delete_garbage(g, floor, &mut keepers).await?;
            }
            history_from = history_from.max((entry.checkpoint_seq, entry.committed_ms));
            floor += 1;
        }
        let entries_from = if may_delete { self.delete_entries_below(floor).await? } else { self.base.entries_from };
        let revivals = self.base.revivals.iter().filter(|r| r.generation > floor).cloned().collect();
        Ok(Some(Collected {
            legacy,
            gc_floor: floor,
            entries_from,
            history_from_seq: history_from.0,
            history_from_ms: history_from.1,
            revivals,
        }))
    }

    /// True if this replica's state was proven current (by a commit or a freshness probe)
    /// recently enough for its GC to delete. A restore record published after that proof,
    /// which this replica has not applied, may name chunks retired long ago; a restore's
    /// state lies at least the history edge margin inside the window, so those chunks stay
    /// unexpired for that margin after the restore was published. Half of it leaves room for
    /// clocks that differ between isolates. (Without a history window nothing past is
    /// restored, and nothing needs the bound.)
    fn proven_current_for_gc(&self, now: f64) -> bool {
        let margin = self.history_edge_margin_ms();
        margin <= 0.0 || now - self.validated_ms <= margin / 2.0
    }

    /// Deletes one generation's retired garbage (`generation` 0: a version-1 entry).
    async fn delete_garbage(&self, g: &Garbage, generation: u64, keepers: &mut Keepers<'_>) -> Result<(), EngineError> {
        let mut keys: Vec<String> = (g.log_from..=g.log_to).map(|s| self.layout.log_key(s)).collect();
        let chunks: Vec<&String> =
            g.chunks.iter().filter(|k| self.layout.owns(k) && !keepers.new_map.contains(k.as_str())).collect();
        if !chunks.is_empty() {
            if keepers.forks.is_none() {
                keepers.forks = Some(self.fork_referenced_chunks().await?);
                for r in &self.base.revivals {
                    keepers.revived.push((r.generation, self.snapshot_chunks(r.record_seq).await?));
                }
            }
            let forks = keepers.forks.as_ref().expect("loaded above");
            for key in chunks {
                let revived = keepers.revived.iter().any(|(at, set)| *at > generation && set.contains(key.as_str()));
                if !revived && !forks.contains(key.as_str()) {
                    keys.push(key.clone());
                }
            }
        }
        self.store.delete_many(&keys).await?;
        Ok(())
    }

    /// The chunk keys of this database that its forks still use.
    pub(super) async fn fork_referenced_chunks(&self) -> Result<HashSet<String>, EngineError> {
        let mut keys = HashSet::new();
        let prefix = self.layout.forks_prefix();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(&prefix, after.as_deref(), MAX_LIST_LIMIT).await?;
            for m in &page.objects {
                if let Some(obj) = self.store.get(&m.key, None).await? {
                    let fork: crate::fork_ref::ForkRef = serde_json::from_slice(&obj.body)
                        .map_err(|e| EngineError::Corrupt(format!("fork reference {} does not parse: {e}", m.key)))?;
                    keys.extend(fork.chunks);
                }
            }
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// The chunks of the image of snapshot record `seq`.
    async fn snapshot_chunks(&self, seq: u64) -> Result<HashSet<String>, EngineError> {
        let Some(obj) = self.store.get(&self.layout.log_key(seq), None).await? else {
            return Err(EngineError::Corrupt(format!("snapshot record {seq} is missing while its chunks are protected")));
        };
        let record = LogRecord::decode(&obj.body)?;
        Ok(record.snapshot.map(|s| s.chunks.into_iter().collect()).unwrap_or_default())
    }

    /// Deletes history entries nothing needs once GC reached `floor`: every state from
    /// generation `floor - 1` on must stay buildable, so its entry, the later ones and the
    /// full map their deltas use stay; so do entries not yet swept. Returns the lowest
    /// generation whose entry may remain.
    async fn delete_entries_below(&self, floor: u64) -> Result<u64, EngineError> {
        let keep_from = (floor - 1).min(self.base.swept_generation + 1).max(1);
        let keep_full = ChunkMap::base_of(keep_from);
        let keys: Vec<String> = (self.base.entries_from.max(1)..keep_from)
            .filter(|g| g % crate::history_entry::FULL_MAP_EVERY != 0 || *g < keep_full)
            .map(|g| self.layout.history_entry_key(g))
            .collect();
        self.store.delete_many(&keys).await?;
        Ok(keep_full.max(self.base.entries_from))
    }

    /// True if the log records before where history starts may be deleted by listing (a
    /// purge, the orphan sweep): where a purging deletion moved the start, not before the
    /// GC window after the deletion's commit has passed ([`Self::collection_delay_ms`]).
    /// Where GC moved it, its records were retired longer ago than that already.
    pub(super) fn purged_log_due(&self, now: f64) -> bool {
        self.base.history_from_ms as f64 + self.collection_delay_ms() <= now
    }

    /// True if the manifest about to be published should carry a sweep.
    pub(super) fn sweep_due(&self, now: f64) -> bool {
        now - self.base.last_sweep_ms >= self.config.orphan_sweep_interval_ms
    }

    /// Deletes orphans: chunks of generations after the last swept one, up to `through`,
    /// that their generation's map does not name; log records GC already passed. Returns
    /// the generation swept through.
    pub(super) async fn sweep_orphans(&self, through: u64) -> Result<u64, EngineError> {
        let mut orphans = Vec::new();
        let swept_from = self.base.swept_generation;
        let through = through.min(swept_from + GENERATIONS_PER_SWEEP);
        let mut swept = swept_from;
        let prefix = self.layout.chunk_prefix();
        let mut after = Some(self.layout.chunks_after(swept_from));
        'chunks: loop {
            let page = self.store.list(&prefix, after.as_deref(), MAX_LIST_LIMIT).await?;
            for m in &page.objects {
                let Some(generation) = self.layout.chunk_generation_of(&m.key) else { continue };
                if generation > through {
                    break 'chunks;
                }
                let Some(entry) = self.entry(generation).await? else {
                    // Never judged without its map: leave it.
                    continue;
                };
                if !self.map_of(&entry).await?.iter().any(|k| *k == m.key) {
                    orphans.push(m.key.clone());
                }
            }
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        swept = swept.max(through);

        // Log records at or below the oldest kept state were deleted by GC (unless a
        // version-1 garbage entry still holds them): any found there were re-created by a
        // zombie writer, or their delete failed. After a purging deletion they are the
        // records before it, deleted only once the GC window after it has passed.
        if !self.purged_log_due(self.now_ms()) {
            self.store.delete_many(&orphans).await?;
            return Ok(swept);
        }
        let legacy = |seq: u64| self.base.garbage.iter().any(|g| (g.log_from..=g.log_to).contains(&seq));
        let prefix = self.layout.log_prefix();
        let mut after: Option<String> = None;
        'log: loop {
            let page = self.store.list(&prefix, after.as_deref(), MAX_LIST_LIMIT).await?;
            for m in &page.objects {
                let Some(seq) = self.layout.log_seq_of(&m.key) else { continue };
                if seq > self.base.history_from_seq {
                    break 'log;
                }
                if !legacy(seq) {
                    orphans.push(m.key.clone());
                }
            }
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        self.store.delete_many(&orphans).await?;
        Ok(swept)
    }
}
