//! History entries: writing the entry of each published generation before the next
//! checkpoint replaces its manifest, and reading entries and their chunk maps back (for
//! GC, the orphan sweep and rebuilding past states).

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::error::EngineError;
use crate::history_entry::{ChunkMap, HistoryEntry};
use crate::store::{PutCondition, PutOutcome};

use super::Database;

/// Entries and maps kept per database (a few: GC and history walk them in order).
const CACHED_ENTRIES: usize = 32;

#[derive(Default)]
pub(super) struct EntryCache {
    entries: BTreeMap<u64, Rc<HistoryEntry>>,
    maps: BTreeMap<u64, Rc<Vec<String>>>,
}

impl EntryCache {
    fn put_entry(&mut self, e: Rc<HistoryEntry>) {
        self.entries.insert(e.generation, e);
        while self.entries.len() > CACHED_ENTRIES {
            self.entries.pop_first();
        }
    }

    fn put_map(&mut self, generation: u64, map: Rc<Vec<String>>) {
        self.maps.insert(generation, map);
        while self.maps.len() > CACHED_ENTRIES {
            self.maps.pop_first();
        }
    }
}

impl Database {
    /// How long superseded objects are kept: for readers of older checkpoints, and for
    /// the history window.
    pub(super) fn retention_ms(&self) -> f64 {
        self.config.gc_retention_ms.max(self.config.history_retention_ms)
    }

    /// The least time between a log record's creation and its deletion, over every path
    /// that deletes records: GC deletes what a checkpoint folded a whole retention window
    /// after that checkpoint, and a purge leaves the records before its deletion to the
    /// scheduled sweep for the GC window after the deletion's commit. What proves a record's
    /// absence by time (a probe's GET and HEAD at once, a listing, the zombie fence) relies
    /// on it, with half of it as the margin for clocks that differ between isolates.
    pub(super) fn collection_delay_ms(&self) -> f64 {
        self.config.gc_retention_ms
    }

    /// How far inside the window's edge a past state must be to be served (read, restored,
    /// forked): GC cannot take its objects for at least this long after it was checked.
    pub(super) fn history_edge_margin_ms(&self) -> f64 {
        super::HISTORY_EDGE_MARGIN_MS.min(self.retention_ms() / 4.0)
    }

    /// The history entry of `generation`: from the base manifest if it is the newest,
    /// else from its object (`None` if it is gone or never existed).
    pub(super) async fn entry(&self, generation: u64) -> Result<Option<Rc<HistoryEntry>>, EngineError> {
        if generation == self.base.generation {
            return Ok(Some(Rc::new(HistoryEntry::of_manifest(&self.base, None))));
        }
        if let Some(e) = self.entries.borrow().entries.get(&generation) {
            return Ok(Some(e.clone()));
        }
        let Some(obj) = self.store.get(&self.layout.history_entry_key(generation), None).await? else {
            return Ok(None);
        };
        let e = Rc::new(HistoryEntry::decode(&obj.body)?);
        if e.generation != generation {
            return Err(EngineError::Corrupt(format!(
                "the history entry of generation {generation} describes generation {}",
                e.generation
            )));
        }
        self.entries.borrow_mut().put_entry(e.clone());
        Ok(Some(e))
    }

    /// The chunk map of `entry`, resolving a delta against its full base.
    pub(super) async fn map_of(&self, entry: &HistoryEntry) -> Result<Rc<Vec<String>>, EngineError> {
        if let Some(m) = self.entries.borrow().maps.get(&entry.generation) {
            return Ok(m.clone());
        }
        let map = match &entry.map {
            ChunkMap::Full { chunks } => Rc::new(chunks.clone()),
            ChunkMap::Delta { base, .. } => {
                let full = match self.entry(*base).await? {
                    Some(b) => match &b.map {
                        ChunkMap::Full { chunks } => Some(chunks.clone()),
                        ChunkMap::Delta { .. } => {
                            return Err(EngineError::Corrupt(format!("history entry {base} should hold a full map")))
                        }
                    },
                    None => None,
                };
                Rc::new(entry.map.resolve(full.as_deref())?)
            }
        };
        self.entries.borrow_mut().put_map(entry.generation, map.clone());
        Ok(map)
    }

    /// Writes the history entry of the base manifest's generation, before a checkpoint
    /// replaces that manifest. Racing checkpointers write equivalent entries; the first
    /// one stays.
    pub(super) async fn write_base_entry(&self) -> Result<(), EngineError> {
        let generation = self.base.generation;
        if generation == 0 || self.entries.borrow().entries.contains_key(&generation) {
            return Ok(());
        }
        let base_generation = ChunkMap::base_of(generation);
        let full = if base_generation == generation {
            None
        } else {
            match self.entry(base_generation).await? {
                Some(e) => match &e.map {
                    ChunkMap::Full { chunks } => Some(chunks.clone()),
                    ChunkMap::Delta { .. } => None,
                },
                None => None,
            }
        };
        let entry = HistoryEntry::of_manifest(&self.base, full.as_deref().map(|m| (base_generation, m)));
        let key = self.layout.history_entry_key(generation);
        match self.store.put(&key, &entry.encode(), PutCondition::CreateOnly).await? {
            PutOutcome::Stored(_) | PutOutcome::PreconditionFailed => {}
        }
        let mut cache = self.entries.borrow_mut();
        cache.put_map(generation, Rc::new(self.base.chunks.clone()));
        cache.put_entry(Rc::new(entry));
        Ok(())
    }
}
