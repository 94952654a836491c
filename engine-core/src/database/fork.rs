//! Forks: a new database that starts as the state after any commit in this one's history
//! window, in a few small writes whatever the size. Its first log record is a snapshot
//! naming this database's chunks (shared copy-on-write: the fork's checkpoints write only
//! the chunks it changes); a reference at every database owning one of those chunks
//! (`forks/{child}/{nonce}`) keeps their GC from deleting them while the fork exists.

use std::collections::BTreeMap;

use crate::bookmark::Bookmark;
use crate::error::EngineError;
use crate::fork_ref::ForkRef;
use crate::layout::Layout;
use crate::log_record::{LogRecord, SnapshotOrigin};
use crate::store::PutCondition;

use super::commit::Landing;
use super::Database;

/// What a fork was made from and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forked {
    pub database: String,
    /// The parent's commit whose state the fork starts with.
    pub from: Bookmark,
    /// The fork's own first commit.
    pub bookmark: Bookmark,
}

impl Database {
    /// Creates database `child` (a valid name, under the same root) as the state after
    /// commit `seq` of this one. Refused if `child` already has any state.
    pub async fn fork(&mut self, seq: u64, child: &str) -> Result<Forked, EngineError> {
        let child_layout = self.layout.sibling(child);
        if child_layout == self.layout {
            return Err(EngineError::Exists(format!("a database cannot be forked onto itself ({child})")));
        }
        let past = self.past(seq).await?;
        let parent = self.parent_name();
        let (snapshot, frames, page_size) = past.as_snapshot(SnapshotOrigin::Fork { parent, seq })?;
        drop(past);
        let exists = || EngineError::Exists(format!("database {child} already exists: fork to a new name"));
        if self.store.head(&child_layout.manifest_key()).await?.is_some()
            || self.store.head(&child_layout.log_key(1)).await?.is_some()
        {
            return Err(exists());
        }

        // References first: from the moment the fork's record exists, its chunks are kept.
        let mut nonce = [0u8; 8];
        self.host.fill_random(&mut nonce);
        let nonce = hex::encode(nonce);
        let created_ms = self.next_commit_ms();
        let mut by_owner: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for key in &snapshot.chunks {
            let owner = Layout::owner_prefix_of(key)
                .ok_or_else(|| EngineError::Corrupt(format!("chunk key {key} names no database")))?;
            by_owner.entry(owner).or_default().push(key.clone());
        }
        let mut references = Vec::new();
        for (owner, chunks) in by_owner {
            let reference = ForkRef { child: child.to_string(), seq, created_ms, chunks };
            let body = serde_json::to_vec(&reference).expect("fork reference serializes");
            let key = Layout::of_prefix(owner).fork_ref_key(child, &nonce);
            self.store.put(&key, &body, PutCondition::Unconditional).await?;
            references.push(key);
        }
        // A deletion purges the old state's chunks once its checkpoint is published, keeping
        // those that references name when it lists them. A reference written after that
        // listing finds the checkpoint here, and the fork is not made.
        let (manifest, _) = super::replay::read_manifest(&self.store, &self.layout).await?;
        if manifest.history_from_seq > seq {
            self.store.delete_many(&references).await?;
            return Err(EngineError::OutsideHistory(format!(
                "{} left the history window while the fork was being made (the database was deleted?)",
                Bookmark(seq)
            )));
        }

        let mut record_nonce = [0u8; 16];
        self.host.fill_random(&mut record_nonce);
        let record = LogRecord {
            seq: 1,
            page_size,
            nonce: record_nonce,
            committed_ms: created_ms,
            snapshot: Some(snapshot),
            frames,
        };
        match self.store_record(&child_layout.log_key(1), &record.encode()).await {
            Landing::Landed => Ok(Forked { database: child.to_string(), from: Bookmark(seq), bookmark: Bookmark(1) }),
            Landing::Stale => Err(exists()),
            Landing::NotStored(e) => Err(e),
            Landing::Unknown(why) => Err(EngineError::CommitUnknown(format!(
                "whether fork {child} was created is unknown ({why}); read it to find out"
            ))),
        }
    }

    /// This database's name (the last part of its prefix).
    pub(super) fn parent_name(&self) -> String {
        self.layout.name().to_string()
    }
}
