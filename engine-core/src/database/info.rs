//! What a database is now, for its owner: size, newest commit, checkpoint, history window,
//! whether it is deleted, and what it was forked from.

use crate::bookmark::Bookmark;
use crate::error::EngineError;
use crate::manifest::ForkedFrom;

use super::{Database, HistoryWindow};

/// A database's state, as `GET /v1/db/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseInfo {
    /// False if nothing was ever committed under this name.
    pub exists: bool,
    pub page_size: u32,
    pub page_count: u32,
    /// The newest commit, and the window of commits that can be read, restored or forked.
    pub history: HistoryWindow,
    pub checkpoint: CheckpointInfo,
    /// Set while the newest state is a deletion.
    pub deleted: Option<DeletionInfo>,
    /// The database and commit this one was forked from, if it was.
    pub forked_from: Option<ForkedFrom>,
}

/// The newest published checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub generation: u64,
    pub bookmark: Bookmark,
    pub committed_ms: u64,
    /// Log records (and their bytes) committed since, not yet folded into chunks.
    pub records_since: u64,
    pub bytes_since: u64,
}

/// The commit that deleted a database, and how to undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeletionInfo {
    pub bookmark: Bookmark,
    pub committed_ms: u64,
    /// Restore this to undo the deletion (while it is inside the history window).
    pub previous: Bookmark,
}

impl Database {
    /// The database as of its newest commit (one catch-up: a manifest read and the log).
    pub async fn info(&mut self) -> Result<DatabaseInfo, EngineError> {
        let history = self.history_window().await?;
        let local = self.local()?;
        let page_size = local.page_size();
        let size = local.durable_db_size()?;
        let page_count = if size > 0 { size } else { self.image.view.page_count };
        let (records_since, bytes_since) = self.log_since_checkpoint();
        let deleted = self.current_deletion().map(|d| DeletionInfo {
            bookmark: Bookmark(d.seq),
            committed_ms: d.committed_ms,
            previous: Bookmark(d.seq - 1),
        });
        Ok(DatabaseInfo {
            exists: history.head.0 > 0,
            page_size,
            page_count: if history.head.0 > 0 { page_count } else { 0 },
            checkpoint: CheckpointInfo {
                generation: self.base.generation,
                bookmark: Bookmark(self.base.checkpoint_seq),
                committed_ms: self.base.committed_ms,
                records_since,
                bytes_since,
            },
            history,
            deleted,
            forked_from: self.image.forked_from.clone(),
        })
    }
}
