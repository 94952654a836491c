//! Checkpoints: folding the log since the last checkpoint into new immutable chunk objects
//! and moving the manifest onto them by compare-and-swap.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use futures::future::join_all;

use crate::error::EngineError;
use crate::local::WalIndex;
use crate::chunk_file::CheckpointView;
use crate::manifest::{Deletion, EmbeddedPage, Garbage, Manifest, Revival, MAX_EMBEDDED_PAGES};
use crate::store::{ByteRange, PutCondition, PutOutcome};
use crate::value::ExecStats;

use super::replay::ProbeResult;
use super::{Database, RecordKind};

/// A chunk the checkpoint writes: its key and its bytes.
struct NewChunk {
    key: String,
    body: Vec<u8>,
}

impl Database {
    /// Writes a batch of a checkpoint's new chunks (create-only, concurrently) and caches
    /// the pages of each one stored under its new key: they are hot. An entry under a key
    /// that no manifest comes to name (the checkpoint failed later) is never read and ages
    /// out. False if a key was taken (nothing of that chunk is cached).
    async fn store_chunks(&self, batch: Vec<NewChunk>, page_size: u32) -> Result<bool, EngineError> {
        // The pages are copied out before the bodies move into the PUTs, and cached only
        // once their chunk is stored: an entry must hold the bytes its key holds in R2.
        let pages: Vec<(Arc<str>, Vec<Arc<[u8]>>)> = batch
            .iter()
            .map(|chunk| (Arc::from(chunk.key.as_str()), chunk.body.chunks(page_size as usize).map(Arc::from).collect()))
            .collect();
        let puts = batch.into_iter().map(|chunk| async move {
            self.store.put(&chunk.key, &chunk.body, PutCondition::CreateOnly).await
        });
        let outcomes = join_all(puts).await;
        let mut all_stored = true;
        for (outcome, (key, chunk_pages)) in outcomes.into_iter().zip(pages) {
            match outcome? {
                PutOutcome::Stored(_) => {
                    for (i, page) in chunk_pages.into_iter().enumerate() {
                        self.cache.insert((key.clone(), i as u32), page);
                    }
                }
                _ => all_stored = false,
            }
        }
        Ok(all_stored)
    }

    /// The log records after the base checkpoint: how many and how many bytes.
    pub(super) fn log_since_checkpoint(&self) -> (u64, u64) {
        let records = self.records.iter().filter(|r| r.meta.seq > self.base.checkpoint_seq);
        records.fold((0, 0), |(n, b), r| (n + 1, b + r.meta.bytes))
    }

    /// Whether a log of `records` records and `bytes` bytes after the checkpoint is long
    /// enough that the commits call for a checkpoint.
    fn log_calls_for_checkpoint(&self, records: u64, bytes: u64) -> bool {
        records >= self.config.checkpoint_records.max(1) || bytes >= self.config.checkpoint_bytes
    }

    pub(super) async fn maybe_checkpoint(&mut self) -> Result<(), EngineError> {
        let (n, bytes) = self.log_since_checkpoint();
        // The first commit after a deletion is published at once, so that listings (which
        // read manifests only) show the database again.
        let revives_deleted = self.base.deleted.is_some() && n > 0;
        let wait_ms = self.checkpoint_wait_ms();
        if revives_deleted || (self.log_calls_for_checkpoint(n, bytes) && wait_ms == 0.0) {
            self.checkpoint().await?;
        } else if bytes >= self.config.max_unfolded_log_bytes {
            // Too much log for the isolate's memory: the commit (durable already) waits for
            // the manifest to take its next write, then folds from a state proven current.
            self.sleeper.sleep(wait_ms).await;
            if self.refresh(&mut ExecStats::default()).await? == ProbeResult::Current {
                self.checkpoint().await?;
            }
        }
        Ok(())
    }

    /// How long the next checkpoint must wait for the manifest's last write to be
    /// `checkpoint_min_interval_ms` old. `written_ms` is by the clock of whichever isolate
    /// wrote the manifest; this replica saw it no later than `base_seen_ms` by its own, so
    /// a writer's clock far ahead cannot hold checkpoints back past one interval.
    fn checkpoint_wait_ms(&self) -> f64 {
        let written = self.base.written_ms.min(self.base_seen_ms);
        (written + self.config.checkpoint_min_interval_ms - self.now_ms()).max(0.0)
    }

    /// If the log after the checkpoint should be folded once the writer has been quiet for
    /// a whole `checkpoint_min_interval_ms` (never less than the pacing wait). It should if
    /// a cold reader would otherwise replay at least `quiet_checkpoint_bytes` of it, or if a
    /// checkpoint the commits called for was put off by the interval between checkpoints. Small tails are left to the next
    /// commits: folding each would write the manifest and a history entry per commit.
    pub fn quiet_checkpoint_due(&self) -> bool {
        let (n, bytes) = self.log_since_checkpoint();
        let due = n > 0 && (self.log_calls_for_checkpoint(n, bytes) || bytes >= self.config.quiet_checkpoint_bytes);
        let live = matches!(self.mode, super::Mode::Live) && self.local.as_ref().is_some_and(|l| !l.in_transaction());
        due && live
    }

    /// Folds the log if [`Self::quiet_checkpoint_due`] says so and the interval since the
    /// last checkpoint has passed. Returns true if it made a checkpoint.
    pub async fn checkpoint_if_quiet(&mut self) -> Result<bool, EngineError> {
        if !self.quiet_checkpoint_due() || self.checkpoint_wait_ms() > 0.0 {
            return Ok(false);
        }
        // While this replica was quiet, others may have committed or checkpointed (and
        // collected what this replica's manifest still lists). Fold only from a state proven
        // current, as a writer that has just committed does; if others moved on, the fold
        // is theirs to make.
        if self.refresh(&mut ExecStats::default()).await? == ProbeResult::Moved {
            return Ok(false);
        }
        self.checkpoint().await
    }

    /// Folds the log since the base checkpoint into new chunk objects and moves the
    /// manifest by compare-and-swap; deletes garbage older than the retention window.
    /// Returns false if there was nothing to fold or another checkpoint won the race
    /// (nothing is lost either way).
    pub async fn checkpoint(&mut self) -> Result<bool, EngineError> {
        if self.applied_seq == self.base.checkpoint_seq || self.unverified_records {
            return Ok(false);
        }
        // Where each changed page's newest image is in the WAL, not the images themselves:
        // each is read when its chunk is built, so the fold holds the WAL and the new
        // chunks, not a third copy of the log.
        let WalIndex { newest_frame: dirty, db_size } = self.local()?.durable_wal_index()?;
        // The image the local database is built on: the base manifest's, or a snapshot
        // record's (whose chunks may be another database's, or superseded ones restored).
        let old = self.view();
        let page_size = self.local()?.page_size();
        let ppc = old.pages_per_chunk;
        let page_count = if db_size > 0 { db_size } else { old.page_count };
        let chunk_count = page_count.div_ceil(ppc);
        let generation = self.base.generation + 1;
        let nonce = crate::host::random_hex(self.host.as_ref(), 6);

        let mut chunks: Vec<String> = old.chunks.iter().take(chunk_count as usize).map(|k| k.to_string()).collect();
        // Chunks are written as they are built, a batch of `fetch_concurrency` at a time,
        // so that the fold holds one batch of them, not a copy of every changed page.
        let mut batch: Vec<NewChunk> = Vec::new();
        let mut written: Vec<u32> = Vec::new();
        // The pages the manifest will carry are copied out of the chunks as they are built.
        let embed = self.pages_worth_embedding()?;
        let mut unchanged_embeds: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let touched: BTreeSet<u32> = dirty.keys().map(|p| (p - 1) / ppc).filter(|c| *c < chunk_count).collect();
        for c in touched.iter().copied() {
            let first = c * ppc + 1;
            let last = ((c + 1) * ppc).min(page_count);
            // Old pages of this chunk that the log did not replace.
            let needed: Vec<u32> =
                (first..=last).filter(|p| !dirty.contains_key(p) && old.page_key(*p).is_some()).collect();
            // One range GET for the span of old pages still needed.
            let mut old_span: Option<(u32, Vec<u8>)> = None;
            if let (Some(&lowest), Some(&highest)) = (needed.first(), needed.last()) {
                let key = old.chunks[c as usize].clone();
                let offset = (lowest - first) as u64 * page_size as u64;
                let length = (highest - lowest + 1) as u64 * page_size as u64;
                let Some(obj) = self.store.get(&key, Some(ByteRange { offset, length })).await? else {
                    return Err(EngineError::BaseGone(key.to_string()));
                };
                if obj.body.len() as u64 != length {
                    return Err(EngineError::Corrupt(format!(
                        "chunk {key} answered {} bytes at offset {offset}, expected {length}",
                        obj.body.len()
                    )));
                }
                old_span = Some((lowest, obj.body));
            }
            let old_page = |p: u32| {
                let (lowest, bytes) = old_span.as_ref()?;
                if p < *lowest || !needed.contains(&p) {
                    return None;
                }
                let at = ((p - lowest) as usize) * page_size as usize;
                bytes.get(at..at + page_size as usize)
            };
            let mut body = Vec::with_capacity(((last - first + 1) * page_size) as usize);
            for p in first..=last {
                match dirty.get(&p) {
                    Some(&frame) => body.extend_from_slice(&self.local()?.frame_page(frame)?),
                    None => match old_page(p) {
                        Some(page) => body.extend_from_slice(page),
                        None => body.resize(body.len() + page_size as usize, 0),
                    },
                }
            }
            let in_chunk = |p: &u32| (first..=last).contains(p) && !dirty.contains_key(p);
            for p in embed.iter().copied().filter(in_chunk).take(MAX_EMBEDDED_PAGES.saturating_sub(unchanged_embeds.len())) {
                let at = ((p - first) * page_size) as usize;
                unchanged_embeds.insert(p, body[at..at + page_size as usize].to_vec());
            }
            let key = self.layout.chunk_key(generation, c, &nonce);
            if (c as usize) < chunks.len() {
                chunks[c as usize] = key.clone();
            } else {
                chunks.push(key.clone());
            }
            batch.push(NewChunk { key, body });
            written.push(c);
            let batch_full = batch.len() >= self.config.fetch_concurrency.max(1);
            if batch_full && !self.store_chunks(std::mem::take(&mut batch), page_size).await? {
                return Ok(false);
            }
        }
        if !self.store_chunks(batch, page_size).await? {
            return Ok(false);
        }
        if chunks.len() != chunk_count as usize {
            return Err(EngineError::Internal("checkpoint left a chunk unassigned".into()));
        }
        let new_view = CheckpointView {
            page_size,
            page_count,
            pages_per_chunk: ppc,
            chunks: chunks.iter().map(|k| Arc::from(k.as_str())).collect(),
        };
        let embedded = self.pages_to_embed(&embed, &dirty, &unchanged_embeds, &new_view)?;
        // Everything the base manifest used that the new map does not.
        let kept: HashSet<&str> = chunks.iter().map(String::as_str).collect();
        let superseded: Vec<String> = self.base.chunks.iter().filter(|k| !kept.contains(k.as_str())).cloned().collect();

        // The base generation's history entry, before its manifest is replaced.
        self.write_base_entry().await?;
        let now = self.now_ms();
        let Some(collected) = self.collect_garbage(now, &chunks).await? else {
            // The manifest moved on: this checkpoint has lost the race (see `collect_garbage`).
            return Ok(false);
        };
        let sweep = self.sweep_due(now);
        let swept_generation = if sweep {
            // Generations before the base one: an attempt at the base generation may still
            // be writing chunks. Best effort: what it misses, the next sweep finds.
            let _ = self.sweep_abandoned_uploads().await;
            match self.sweep_orphans(self.base.generation.saturating_sub(1)).await {
                Ok(swept) => swept,
                Err(_) => self.base.swept_generation,
            }
        } else {
            self.base.swept_generation
        };
        let log_from = self.base.checkpoint_seq + 1;
        let folded: Vec<_> = self.records.iter().filter(|r| r.meta.seq >= log_from).map(|r| r.meta).collect();
        let log_nonces = if folded.len() as u64 == self.applied_seq + 1 - log_from {
            folded.iter().map(|m| format!("{:016x}", m.nonce)).collect()
        } else {
            Vec::new() // incomplete: the fence then cannot tell, and says so
        };
        let mut revivals = collected.revivals;
        let (mut history_from_seq, mut history_from_ms) = (collected.history_from_seq, collected.history_from_ms);
        let (mut gc_floor, mut entries_from) = (collected.gc_floor, collected.entries_from);
        for m in &folded {
            match m.kind {
                RecordKind::Snapshot { revives: true, .. } => revivals.push(Revival { generation, record_seq: m.seq }),
                // A purging deletion ends the history before it: its objects are purged by
                // listing (see `delete::purge`), not by walking the generations.
                RecordKind::Snapshot { ends_history: true, .. } => {
                    (history_from_seq, history_from_ms) = (m.seq, m.committed_ms);
                    (gc_floor, entries_from) = (generation, generation);
                    revivals.clear();
                }
                _ => {}
            }
        }
        let manifest = Manifest {
            version: Manifest::VERSION,
            generation,
            checkpoint_seq: self.applied_seq,
            committed_ms: self.last_commit_ms,
            page_size,
            page_count,
            pages_per_chunk: ppc,
            chunks,
            retired: Some(Garbage {
                retired_ms: now.max(self.last_commit_ms as f64),
                chunks: superseded,
                log_from,
                log_to: self.applied_seq,
                log_nonces,
            }),
            garbage: collected.legacy,
            gc_floor,
            entries_from,
            history_from_seq,
            history_from_ms,
            revivals,
            last_sweep_ms: if sweep { now } else { self.base.last_sweep_ms },
            swept_generation,
            written_ms: now,
            forked_from: self.image.forked_from.clone(),
            log_purged_before: self.base.log_purged_before,
            deleted: folded
                .last()
                .filter(|m| m.seq == self.applied_seq && matches!(m.kind, RecordKind::Snapshot { deletes: true, .. }))
                .map(|m| Deletion { seq: m.seq, committed_ms: m.committed_ms }),
            pages: embedded,
        };
        let condition = match &self.base_etag {
            Some(etag) => PutCondition::EtagMatches(etag.clone()),
            None => PutCondition::CreateOnly,
        };
        let etag = match self.store.put(&self.layout.manifest_key(), &manifest.encode(), condition).await {
            Ok(PutOutcome::Stored(meta)) => meta.etag,
            Ok(PutOutcome::PreconditionFailed) => {
                // Another isolate checkpointed first: ours was never referenced.
                let keys: Vec<String> = written.iter().map(|c| manifest.chunks[*c as usize].clone()).collect();
                let _ = self.store.delete_many(&keys).await;
                return Ok(false);
            }
            // Ambiguous: the next manifest check will tell; if it did not land, the new
            // chunks are orphans that a later sweep collects.
            Err(e) => return Err(e.into()),
        };
        self.rebase(manifest, Some(etag)).await?;
        Ok(true)
    }

    /// The pages a manifest carries if their bytes are at hand (see [`Manifest::pages`]):
    /// page 1 and the lowest table and index roots.
    fn pages_worth_embedding(&self) -> Result<Vec<u32>, EngineError> {
        let mut wanted = vec![1];
        wanted.extend(self.local()?.root_pages().into_iter().filter(|p| *p != 1));
        Ok(wanted)
    }

    /// The pages the new manifest carries, of `wanted`, as this checkpoint leaves them. A
    /// page is carried if its bytes are at hand (changed since the last checkpoint, copied
    /// from a chunk just written, or cached); one that would take a read is left to its
    /// page group.
    fn pages_to_embed(
        &self,
        wanted: &[u32],
        dirty: &BTreeMap<u32, u64>,
        unchanged_in_new_chunks: &BTreeMap<u32, Vec<u8>>,
        new_view: &CheckpointView,
    ) -> Result<Vec<EmbeddedPage>, EngineError> {
        let page_size = new_view.page_size as usize;
        let mut embedded = Vec::new();
        for page_no in wanted.iter().copied().filter(|p| *p <= new_view.page_count) {
            let Some((key, index)) = new_view.page_key(page_no) else { continue };
            let written = || unchanged_in_new_chunks.get(&page_no).cloned();
            let cached = || self.cache.get(&(key.clone(), index)).map(|p| p.to_vec());
            let changed = match dirty.get(&page_no) {
                Some(&frame) => Some(self.local()?.frame_page(frame)?),
                None => None,
            };
            let bytes = changed.or_else(written).or_else(cached);
            if let Some(bytes) = bytes.filter(|b| b.len() == page_size) {
                embedded.push(EmbeddedPage { page_no, bytes });
            }
            if embedded.len() == MAX_EMBEDDED_PAGES {
                break;
            }
        }
        Ok(embedded)
    }
}
