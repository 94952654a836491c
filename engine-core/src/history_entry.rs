//! History entries: one immutable object per published checkpoint generation
//! (`db/N/checkpoint/{generation:012}`), written from that generation's manifest before the
//! next checkpoint replaces it. Together with the log records they let any state inside the
//! retention window be rebuilt: the entry of the newest checkpoint at or before a commit,
//! plus the log records after it.
//!
//! Chunk maps are large (one key per 256 KiB of database), so an entry stores its map in
//! full only every [`FULL_MAP_EVERY`] generations; the others store what changed since that
//! full one (cumulative, so any entry needs at most two objects).

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::manifest::{Garbage, Manifest};

/// A generation whose number is a multiple of this stores its chunk map in full.
pub const FULL_MAP_EVERY: u64 = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u32,
    pub generation: u64,
    pub checkpoint_seq: u64,
    pub committed_ms: u64,
    pub page_size: u32,
    pub page_count: u32,
    pub pages_per_chunk: u32,
    pub map: ChunkMap,
    /// What this generation's checkpoint retired (deleted once older than the window).
    pub retired: Option<Garbage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChunkMap {
    Full { chunks: Vec<String> },
    /// The map of generation `base` (a full one) with `changed` chunks replaced or added,
    /// cut to `chunk_count` chunks.
    Delta { base: u64, chunk_count: u32, changed: Vec<(u32, String)> },
}

impl ChunkMap {
    /// The generation whose full map a delta for `generation` is relative to.
    pub fn base_of(generation: u64) -> u64 {
        generation - generation % FULL_MAP_EVERY
    }

    /// The map of `chunks`, relative to `base_map` (the full map of `base`) if given.
    pub fn diff(chunks: &[String], base: Option<(u64, &[String])>) -> Self {
        match base {
            None => ChunkMap::Full { chunks: chunks.to_vec() },
            Some((base, base_map)) => ChunkMap::Delta {
                base,
                chunk_count: chunks.len() as u32,
                changed: chunks
                    .iter()
                    .enumerate()
                    .filter(|(i, k)| base_map.get(*i) != Some(*k))
                    .map(|(i, k)| (i as u32, k.clone()))
                    .collect(),
            },
        }
    }

    /// Resolves a delta against `base_map` (the full map of its base).
    pub fn resolve(&self, base_map: Option<&[String]>) -> Result<Vec<String>, EngineError> {
        match self {
            ChunkMap::Full { chunks } => Ok(chunks.clone()),
            ChunkMap::Delta { base, chunk_count, changed } => {
                let base_map = base_map
                    .ok_or_else(|| EngineError::Corrupt(format!("the history entry of generation {base} is missing")))?;
                let mut chunks: Vec<String> = base_map.iter().take(*chunk_count as usize).cloned().collect();
                chunks.resize(*chunk_count as usize, String::new());
                for (i, key) in changed {
                    let slot = chunks
                        .get_mut(*i as usize)
                        .ok_or_else(|| EngineError::Corrupt(format!("history entry names chunk {i} of {chunk_count}")))?;
                    *slot = key.clone();
                }
                if chunks.iter().any(String::is_empty) {
                    return Err(EngineError::Corrupt("a history entry leaves a chunk unnamed".into()));
                }
                Ok(chunks)
            }
        }
    }
}

impl HistoryEntry {
    pub const VERSION: u32 = 1;

    /// The entry of `m`'s generation; `base` is the full map of its delta base, if stored.
    pub fn of_manifest(m: &Manifest, base: Option<(u64, &[String])>) -> Self {
        HistoryEntry {
            version: Self::VERSION,
            generation: m.generation,
            checkpoint_seq: m.checkpoint_seq,
            committed_ms: m.committed_ms,
            page_size: m.page_size,
            page_count: m.page_count,
            pages_per_chunk: m.pages_per_chunk,
            map: ChunkMap::diff(&m.chunks, base.filter(|(g, _)| *g != m.generation)),
            retired: m.retired.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("history entry serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let e: HistoryEntry = serde_json::from_slice(bytes)
            .map_err(|e| EngineError::Corrupt(format!("history entry does not parse: {e}")))?;
        if e.version > Self::VERSION {
            return Err(EngineError::Corrupt(format!(
                "history entry has format version {}, newer than this server reads; upgrade the Worker",
                e.version
            )));
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_resolve_against_their_full_base() {
        let base: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        let now: Vec<String> = vec!["k0".into(), "n1".into(), "k2".into(), "n3".into()];
        let map = ChunkMap::diff(&now, Some((64, &base)));
        assert_eq!(map, ChunkMap::Delta { base: 64, chunk_count: 4, changed: vec![(1, "n1".into()), (3, "n3".into())] });
        assert_eq!(map.resolve(Some(&base)).unwrap(), now);
        let grown: Vec<String> = (0..7).map(|i| format!("g{i}")).collect();
        assert_eq!(ChunkMap::diff(&grown, Some((64, &base))).resolve(Some(&base)).unwrap(), grown);
        assert!(map.resolve(None).is_err());
        assert_eq!(ChunkMap::base_of(130), 128);
    }
}
