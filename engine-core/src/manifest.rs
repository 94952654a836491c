//! The manifest: the one mutable object of a database, changed only by etag
//! compare-and-swap. It names the checkpoint the log continues from. An absent manifest
//! means "no checkpoint yet": the log starts at record 1 on an empty database.

use serde::{Deserialize, Serialize};

use crate::error::EngineError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Manifest {
    /// Format version of this object.
    pub version: u32,
    /// Incremented on every change; keeps etags unique even if all else repeats (ABA).
    pub generation: u64,
    /// Every log record with seq <= this is folded into the checkpoint.
    pub checkpoint_seq: u64,
    pub page_size: u32,
    /// Database size in pages at the checkpoint.
    pub page_count: u32,
}

impl Manifest {
    pub const VERSION: u32 = 1;

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| EngineError::Corrupt(format!("manifest does not parse: {e}")))?;
        if m.version != Self::VERSION {
            return Err(EngineError::Corrupt(format!("manifest version {} is not supported", m.version)));
        }
        Ok(m)
    }
}
