//! The databases of a bucket, for listings: their names come from one LIST of the
//! databases' prefixes (R2's delimiter), what each is from its manifest (one GET each,
//! [`DbConfig::fetch_concurrency`](crate::DbConfig) at a time). A manifest describes the
//! newest checkpoint; a deletion and the first commit after one are checkpointed at once,
//! so whether a database is deleted is always current here.

use futures::future::join_all;

use crate::bookmark::Bookmark;
use crate::error::EngineError;
use crate::layout::Layout;
use crate::manifest::{Deletion, Manifest};
use crate::store::{after_folder, ObjectStore};

/// Databases one listing page holds unless asked for fewer.
pub const LIST_DEFAULT_LIMIT: usize = 50;
/// The most databases one listing page holds (each costs a manifest GET).
pub const LIST_MAX_LIMIT: usize = 200;
/// LIST calls one page may make while it skips deleted databases.
const LIST_CALLS_PER_PAGE: u32 = 10;

/// One database as a listing shows it: what its newest checkpoint says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedDatabase {
    pub name: String,
    /// The checkpoint's size in bytes (commits since it are not counted).
    pub checkpoint_bytes: u64,
    pub checkpoint: Bookmark,
    pub checkpoint_ms: u64,
    /// Set if the database is deleted (only listed when asked for).
    pub deleted: Option<Deletion>,
    /// The deletion ended the history too (a purge): nothing of the old state is left.
    pub purged: bool,
    /// The log records before a purging deletion are still to be deleted (the scheduled
    /// sweep does it once the GC window after the deletion has passed).
    pub purge_log_pending: bool,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatabasePage {
    pub databases: Vec<ListedDatabase>,
    /// The name to list on after, if more may follow.
    pub next_after: Option<String>,
}

/// What a listing asks for.
#[derive(Debug, Clone, Copy)]
pub struct ListRequest<'a> {
    /// List names after this one (the previous page's `next_after`).
    pub after: Option<&'a str>,
    pub limit: usize,
    pub include_deleted: bool,
}

/// Lists the databases under `root` in key order, `request.limit` at most
/// (≤ [`LIST_MAX_LIMIT`]), reading `fan_out` manifests at a time.
pub async fn list_databases(
    store: &dyn ObjectStore,
    root: &str,
    request: ListRequest<'_>,
    fan_out: usize,
) -> Result<DatabasePage, EngineError> {
    let prefix = Layout::databases_prefix(root);
    let limit = request.limit.clamp(1, LIST_MAX_LIMIT);
    let mut start_after = request.after.map(|name| after_folder(&format!("{prefix}{name}/")));
    let mut page = DatabasePage::default();
    for _ in 0..LIST_CALLS_PER_PAGE {
        let wanted = limit - page.databases.len();
        let folders = store.list_folders(&prefix, start_after.as_deref(), wanted).await?;
        for batch in folders.folders.chunks(fan_out.max(1)) {
            let layouts: Vec<Layout> = batch.iter().map(|folder| Layout::of_prefix(folder)).collect();
            let keys: Vec<String> = layouts.iter().map(Layout::manifest_key).collect();
            let manifests = join_all(keys.iter().map(|key| store.get(key, None))).await;
            for (layout, manifest) in layouts.iter().zip(manifests) {
                let name = layout.name().to_string();
                let listed = match manifest? {
                    Some(obj) => {
                        let m = Manifest::decode(&obj.body)?;
                        ListedDatabase {
                            name,
                            checkpoint_bytes: m.page_count as u64 * m.page_size as u64,
                            checkpoint: Bookmark(m.checkpoint_seq),
                            checkpoint_ms: m.committed_ms,
                            deleted: m.deleted,
                            purged: m.deleted.is_some_and(|d| m.history_from_seq >= d.seq),
                            purge_log_pending: m.purge_log_pending().is_some(),
                        }
                    }
                    // Never checkpointed: fewer commits than a checkpoint folds.
                    None => ListedDatabase {
                        name,
                        checkpoint_bytes: 0,
                        checkpoint: Bookmark(0),
                        checkpoint_ms: 0,
                        deleted: None,
                        purged: false,
                        purge_log_pending: false,
                    },
                };
                page.next_after = Some(listed.name.clone());
                if listed.deleted.is_none() || request.include_deleted {
                    page.databases.push(listed);
                }
            }
        }
        match folders.next_start_after {
            Some(next) if page.databases.len() < limit => start_after = Some(next),
            Some(_) => return Ok(page),
            None => {
                page.next_after = None;
                return Ok(page);
            }
        }
    }
    Ok(page)
}
