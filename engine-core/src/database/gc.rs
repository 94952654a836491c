//! Garbage collection: deleting objects that no manifest a reader may still be using
//! references. Two mechanisms:
//!
//! * **Retired garbage.** Each checkpoint records in the new manifest what it superseded
//!   (old chunks, the folded log records) with the time; a later checkpoint deletes what
//!   was retired longer ago than the retention window.
//! * **Orphan sweep.** Objects no manifest ever referenced, or whose delete failed, or that
//!   a zombie writer re-created below a checkpoint, are found by listing, at most once per
//!   sweep interval, after a checkpoint's manifest is published. It never deletes a live
//!   object: a chunk is deleted only if its generation is at most the published manifest's
//!   (later generations may belong to a checkpoint in progress) and neither the manifest
//!   nor its retired garbage names it; a log record only if the published checkpoint
//!   covers it and no retired garbage range holds it.

use std::collections::HashSet;

use crate::error::EngineError;
use crate::manifest::{Garbage, Manifest};
use crate::store::MAX_LIST_LIMIT;

use super::Database;

/// How often a database's objects are swept for orphans (LIST is a class A operation).
pub const ORPHAN_SWEEP_INTERVAL_MS: f64 = 60.0 * 60.0 * 1000.0;

impl Database {
    /// Deletes the base manifest's garbage retired longer ago than the retention window;
    /// returns the garbage still to keep.
    pub(super) async fn collect_expired_garbage(&self, now: f64) -> Result<Vec<Garbage>, EngineError> {
        let (expired, keep): (Vec<Garbage>, Vec<Garbage>) =
            self.base.garbage.iter().cloned().partition(|g| g.retired_ms + self.config.gc_retention_ms <= now);
        for g in &expired {
            let mut keys = g.chunks.clone();
            keys.extend((g.log_from..=g.log_to).map(|s| self.layout.log_key(s)));
            self.store.delete_many(&keys).await?;
        }
        Ok(keep)
    }

    /// True if the manifest about to be published should carry a sweep (and the sweep run
    /// once it is published).
    pub(super) fn sweep_due(&self, now: f64) -> bool {
        now - self.base.last_sweep_ms >= self.config.orphan_sweep_interval_ms
    }

    /// Deletes objects that `published` (just stored) and its retired garbage do not
    /// reference. Failures only leave orphans for the next sweep.
    pub(super) async fn sweep_orphans(&self, published: &Manifest) -> Result<u64, EngineError> {
        let mut live: HashSet<&str> = published.chunks.iter().map(String::as_str).collect();
        for g in &published.garbage {
            live.extend(g.chunks.iter().map(String::as_str));
        }
        let retired_log = |seq: u64| published.garbage.iter().any(|g| (g.log_from..=g.log_to).contains(&seq));
        let mut orphans = Vec::new();

        let prefix = self.layout.chunk_prefix();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(&prefix, after.as_deref(), MAX_LIST_LIMIT).await?;
            for m in &page.objects {
                let Some(generation) = self.layout.chunk_generation_of(&m.key) else { continue };
                if generation <= published.generation && !live.contains(m.key.as_str()) {
                    orphans.push(m.key.clone());
                }
            }
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }

        let prefix = self.layout.log_prefix();
        let mut after: Option<String> = None;
        'log: loop {
            let page = self.store.list(&prefix, after.as_deref(), MAX_LIST_LIMIT).await?;
            for m in &page.objects {
                let Some(seq) = self.layout.log_seq_of(&m.key) else { continue };
                if seq > published.checkpoint_seq {
                    break 'log;
                }
                if !retired_log(seq) {
                    orphans.push(m.key.clone());
                }
            }
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        self.store.delete_many(&orphans).await?;
        Ok(orphans.len() as u64)
    }
}
