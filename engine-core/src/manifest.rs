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
    /// Objects no longer referenced, deleted by a later checkpoint once older than the
    /// retention window (readers of older manifests may still be using them).
    #[serde(default)]
    pub garbage: Vec<Garbage>,
    /// When objects no manifest references (left by failed uploads, ambiguous PUTs,
    /// failed deletes, zombie writers) were last swept (ms since the Unix epoch).
    #[serde(default)]
    pub last_sweep_ms: f64,
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
    /// The nonce id of record `seq` as this checkpoint folded it, if this entry knows.
    pub fn folded_nonce(&self, seq: u64) -> Option<u64> {
        if !(self.log_from..=self.log_to).contains(&seq) {
            return None;
        }
        let text = self.log_nonces.get((seq - self.log_from) as usize)?;
        u64::from_str_radix(text, 16).ok()
    }
}

impl Manifest {
    pub const VERSION: u32 = 1;

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
            garbage: Vec::new(),
            last_sweep_ms: 0.0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| EngineError::Corrupt(format!("manifest does not parse: {e}")))?;
        if m.version != Self::VERSION {
            return Err(EngineError::Corrupt(format!("manifest version {} is not supported", m.version)));
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
        Ok(m)
    }
}
