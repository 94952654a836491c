//! The manifest: the one mutable object of a database, changed only by etag
//! compare-and-swap at checkpoints. It names the checkpoint the log continues from. An
//! absent manifest means "no checkpoint yet": the log starts at record 1 on an empty
//! database.

use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// Pages per chunk object (64 × 4 KiB = 256 KiB).
pub const DEFAULT_PAGES_PER_CHUNK: u32 = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this object.
    pub version: u32,
    /// Incremented on every change; keeps etags unique even if all else repeats (ABA).
    pub generation: u64,
    /// Every log record with seq <= this is folded into the chunks.
    pub checkpoint_seq: u64,
    /// Commit time of record `checkpoint_seq` (ms since the Unix epoch; 0 if unknown).
    #[serde(default)]
    pub committed_ms: u64,
    pub page_size: u32,
    /// Database size in pages at the checkpoint.
    pub page_count: u32,
    pub pages_per_chunk: u32,
    /// Chunk `i` holds pages `i * pages_per_chunk + 1 ..= (i + 1) * pages_per_chunk`.
    pub chunks: Vec<String>,
    /// What this checkpoint retired: the chunks it superseded and the log records it
    /// folded. Kept (here, then in the generation's history entry) until it is older than
    /// the retention window: readers of older manifests and history may still use them.
    #[serde(default)]
    pub retired: Option<Garbage>,
    /// Garbage of version-1 manifests (before history entries), deleted by time as then.
    #[serde(default)]
    pub garbage: Vec<Garbage>,
    /// The lowest generation whose retired garbage is not yet deleted: every state from
    /// the checkpoint of generation `gc_floor - 1` on can still be rebuilt.
    #[serde(default)]
    pub gc_floor: u64,
    /// The lowest generation whose history entry may still exist.
    #[serde(default)]
    pub entries_from: u64,
    /// The oldest log position whose state can be rebuilt (history starts here) and its
    /// commit time.
    #[serde(default)]
    pub history_from_seq: u64,
    #[serde(default)]
    pub history_from_ms: u64,
    /// Snapshot records folded by generations whose older garbage is still pending: their
    /// chunks came back to life and must outlive that garbage.
    #[serde(default)]
    pub revivals: Vec<Revival>,
    /// When objects nothing references (left by failed uploads, ambiguous PUTs, failed
    /// deletes, zombie writers) were last swept (ms since the Unix epoch)...
    #[serde(default)]
    pub last_sweep_ms: f64,
    /// ...and the generations swept so far (chunks of each are checked once).
    #[serde(default)]
    pub swept_generation: u64,
    /// When this manifest was written (ms since the Unix epoch; 0 if unknown): the next
    /// checkpoint waits `checkpoint_min_interval_ms` after it.
    #[serde(default)]
    pub written_ms: f64,
    /// Set when the checkpoint's state is a deletion (the last record it folded deleted the
    /// database): listings read it here, without the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Deletion>,
    /// Set if this database began as a fork (kept across checkpoints, restores and imports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<ForkedFrom>,
    /// Log records below this are known deleted. A purging deletion leaves the records
    /// before it to the scheduled sweep for the GC window after the deletion's commit
    /// (readers and writers prove a record's absence by time: ARCHITECTURE.md); the sweep
    /// sets this once it has deleted them, and listings then skip the database.
    #[serde(default)]
    pub log_purged_before: u64,
    /// A few pages of this checkpoint carried in the manifest itself, so that a cold open
    /// reads them with the manifest instead of one page group each: page 1 (the schema)
    /// and the roots of tables and indexes. Copies: the chunks hold the same bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pages: Vec<EmbeddedPage>,
}

/// The most pages a manifest carries (each adds about 5.5 KB of base64 to the manifest,
/// which every cold open and every database listing reads).
pub const MAX_EMBEDDED_PAGES: usize = 8;

/// A checkpoint page carried in the manifest (see [`Manifest::pages`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddedPage {
    pub page_no: u32,
    #[serde(with = "crate::value::base64_bytes")]
    pub bytes: Vec<u8>,
}

/// The database and commit a fork was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkedFrom {
    pub parent: String,
    pub seq: u64,
}

/// The commit that deleted a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub seq: u64,
    pub committed_ms: u64,
}

/// A snapshot record (restore, import) folded into generation `generation`: the chunks of
/// its image are live again from then on, even where older garbage lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revival {
    pub generation: u64,
    pub record_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Garbage {
    /// When these became unreferenced (ms since the Unix epoch).
    pub retired_ms: f64,
    /// Superseded chunk objects.
    pub chunks: Vec<String>,
    /// Log records `log_from..=log_to` folded into a checkpoint (empty if from > to).
    pub log_from: u64,
    pub log_to: u64,
    /// For each of those records, the first 8 bytes of its nonce (16 hex digits): which
    /// write it was (see the zombie fence). Empty where unknown.
    #[serde(default)]
    pub log_nonces: Vec<String>,
}

impl Garbage {
    /// True if this checkpoint folded log record `seq`.
    pub fn covers(&self, seq: u64) -> bool {
        (self.log_from..=self.log_to).contains(&seq)
    }

    /// The nonce id of record `seq` as this checkpoint folded it, if this entry knows.
    pub fn folded_nonce(&self, seq: u64) -> Option<u64> {
        if !self.covers(seq) {
            return None;
        }
        let text = self.log_nonces.get((seq - self.log_from) as usize)?;
        u64::from_str_radix(text, 16).ok()
    }
}

impl Manifest {
    pub const VERSION: u32 = 2;

    /// The state before any checkpoint.
    pub fn empty() -> Self {
        Manifest {
            version: Self::VERSION,
            generation: 0,
            checkpoint_seq: 0,
            committed_ms: 0,
            page_size: 0,
            page_count: 0,
            pages_per_chunk: DEFAULT_PAGES_PER_CHUNK,
            chunks: Vec::new(),
            retired: None,
            garbage: Vec::new(),
            gc_floor: 1,
            entries_from: 1,
            history_from_seq: 0,
            history_from_ms: 0,
            revivals: Vec::new(),
            last_sweep_ms: 0.0,
            swept_generation: 0,
            written_ms: 0.0,
            deleted: None,
            forked_from: None,
            log_purged_before: 0,
            pages: Vec::new(),
        }
    }

    /// The purging deletion this checkpoint is, while the log records before it are
    /// still to be deleted (see [`Manifest::log_purged_before`]).
    pub fn purge_log_pending(&self) -> Option<Deletion> {
        self.deleted.filter(|d| self.history_from_seq >= d.seq && self.log_purged_before < d.seq)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| EngineError::Corrupt(format!("manifest does not parse: {e}")))?;
        let mut m = m;
        match m.version {
            Self::VERSION => {}
            1 => {
                // Before history: all garbage is in the list, and no older state is kept.
                m.gc_floor = m.generation + 1;
                m.entries_from = m.generation;
                m.history_from_seq = m.checkpoint_seq;
                m.history_from_ms = m.committed_ms;
                m.swept_generation = m.generation;
            }
            v if v > Self::VERSION => {
                return Err(EngineError::Corrupt(format!(
                    "the manifest has format version {v}, newer than this server reads (up to {}); upgrade the Worker",
                    Self::VERSION
                )))
            }
            v => return Err(EngineError::Corrupt(format!("manifest version {v} is not supported"))),
        }
        let needed = m.page_count.div_ceil(m.pages_per_chunk.max(1)) as usize;
        if m.pages_per_chunk == 0 || m.chunks.len() != needed {
            return Err(EngineError::Corrupt(format!(
                "manifest lists {} chunks for {} pages of {} per chunk",
                m.chunks.len(),
                m.page_count,
                m.pages_per_chunk
            )));
        }
        if let Some(bad) = m.pages.iter().find(|p| p.page_no == 0 || p.page_no > m.page_count || p.bytes.len() != m.page_size as usize) {
            return Err(EngineError::Corrupt(format!(
                "the manifest carries page {} of {} bytes, but the checkpoint has {} pages of {} bytes",
                bad.page_no,
                bad.bytes.len(),
                m.page_count,
                m.page_size
            )));
        }
        Ok(m)
    }
}
