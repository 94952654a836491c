//! Database administration: `GET /v1/db` (the databases, paged), `GET /v1/db/{name}` (one
//! database's size, newest commit, checkpoint, history window, deletion and fork origin) and
//! `DELETE /v1/db/{name}[?purge=true]`.

use std::rc::Rc;

use engine_core::bookmark::Bookmark;
use engine_core::catalog::{self, ListRequest, LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT};
use engine_core::store::{CountingStore, ObjectStore};
use engine_core::{DeleteMode, HistoryWindow};
use futures::FutureExt;
use serde_json::{json, Value};
use worker::Env;

use crate::auth::{self, Access};
use crate::db_request::DbRequest;
use crate::settings::{self, AccessRules};
use crate::wire::{validate_db_name, ApiError};
use crate::Answer;

/// What `GET /v1/db` was asked for, from its query string.
pub struct ListQuery {
    pub after: Option<String>,
    pub limit: Option<String>,
    pub deleted: Option<String>,
}

fn flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request("INVALID_REQUEST", format!("{name} must be true or false, not {other:?}"))),
    }
}

/// `GET /v1/db[?limit=&after=&deleted=true]`: databases in key order, those the token may
/// see; `next` names the `after` of the next page (absent on the last).
pub async fn list(env: &Env, rules: &AccessRules, authorization: Option<&str>, query: ListQuery) -> Result<Answer, ApiError> {
    let limit = match query.limit.as_deref() {
        None => LIST_DEFAULT_LIMIT,
        Some(text) => text.parse::<usize>().ok().filter(|n| (1..=LIST_MAX_LIMIT).contains(n)).ok_or_else(|| {
            ApiError::bad_request("INVALID_REQUEST", format!("limit must be 1 to {LIST_MAX_LIMIT}, not {text:?}"))
        })?,
    };
    if let Some(after) = &query.after {
        validate_db_name(after)?;
    }
    let include_deleted = flag("deleted", query.deleted.as_deref())?;
    let r2: Rc<dyn ObjectStore> = Rc::new(settings::r2_store(env)?);
    let store = CountingStore::new(r2);
    store.budget_calls(settings::r2_call_budget(env));
    let request = ListRequest { after: query.after.as_deref(), limit, include_deleted };
    let page = catalog::list_databases(&store, "", request, settings::db_config(env).fetch_concurrency).await?;
    let databases: Vec<Value> = page
        .databases
        .iter()
        .filter(|d| auth::authorize(rules, authorization, Some(&d.name)).is_ok())
        .map(|d| {
            let mut item = json!({
                "name": d.name,
                "checkpoint_bytes": d.checkpoint_bytes,
                "checkpoint": { "bookmark": d.checkpoint.to_string(), "time_ms": d.checkpoint_ms },
            });
            if let Some(deleted) = d.deleted {
                item["deleted"] = json!({ "bookmark": Bookmark(deleted.seq).to_string(), "time_ms": deleted.committed_ms });
            }
            item
        })
        .collect();
    let counts = store.counts();
    Ok(Answer::json(json!({
        "databases": databases,
        "next": page.next_after,
        "meta": { "r2_reads": counts.reads, "r2_writes": counts.writes },
    })))
}

fn window_json(w: &HistoryWindow) -> Value {
    json!({ "from": w.from.to_string(), "from_ms": w.from_ms, "head": w.head.to_string(), "head_ms": w.head_ms })
}

/// `GET /v1/db/{name}`: what the database is now. A name nothing was ever committed to is
/// `DATABASE_NOT_FOUND`; a deleted database answers with `deleted` (and how to undo it).
pub async fn info(db: DbRequest, env: &Env) -> Result<Answer, ApiError> {
    let name = db.name.clone();
    let (info, r2) = db.exclusive(|d| d.info().boxed_local()).await?;
    if !info.exists {
        return Err(ApiError::new(404, "DATABASE_NOT_FOUND", format!("nothing was ever committed to database {name:?}")));
    }
    let config = settings::db_config(env);
    let head = info.history.head.to_string();
    let mut body = json!({
        "name": name,
        "size_bytes": info.page_count as u64 * info.page_size as u64,
        "page_size": info.page_size,
        "page_count": info.page_count,
        "bookmark": head,
        "history": window_json(&info.history),
        "history_retention_ms": config.history_retention_ms,
        "checkpoint": {
            "generation": info.checkpoint.generation,
            "bookmark": info.checkpoint.bookmark.to_string(),
            "time_ms": info.checkpoint.committed_ms,
            "log_records_since": info.checkpoint.records_since,
            "log_bytes_since": info.checkpoint.bytes_since,
        },
        "forked_from": info.forked_from.map(|f| json!({ "database": f.parent, "bookmark": Bookmark(f.seq).to_string() })),
        "deleted": info.deleted.map(|d| json!({
            "bookmark": d.bookmark.to_string(),
            "time_ms": d.committed_ms,
            "restore": { "bookmark": d.previous.to_string() },
        })),
        "meta": { "bookmark": head, "r2_reads": r2.reads, "r2_writes": r2.writes },
    });
    if info.deleted.is_none() {
        body.as_object_mut().map(|o| o.remove("deleted"));
    }
    Ok(Answer { body, timing: None, bookmark: Some(head), file: None })
}

/// `DELETE /v1/db/{name}[?purge=true]`: the database becomes empty, as one commit. Its
/// history stays: restoring `previous` undoes the deletion until it leaves the window, and
/// GC takes the old objects after that. With `purge=true` the history ends at the deletion
/// and the old state's objects are deleted now (those its forks use stay); a purge cut
/// short by its call budget says so (`purge.complete: false`): deleting again finishes it.
pub async fn delete(db: DbRequest, purge: Option<&str>) -> Result<Answer, ApiError> {
    if db.access != Access::Write {
        return Err(auth::read_only_error());
    }
    let mode = if flag("purge", purge)? { DeleteMode::Purge } else { DeleteMode::KeepHistory };
    let name = db.name.clone();
    let (deleted, r2) = db.exclusive(move |d| d.delete(mode).boxed_local()).await?;
    let bookmark = deleted.bookmark.to_string();
    let mut body = json!({
        "deleted": name,
        "bookmark": bookmark,
        "previous": deleted.previous.to_string(),
        "published": deleted.published,
        "meta": { "bookmark": bookmark, "r2_reads": r2.reads, "r2_writes": r2.writes },
    });
    if let Some(p) = deleted.purge {
        body["purge"] = json!({
            "objects_deleted": p.objects_deleted,
            "chunks_kept_for_forks": p.chunks_kept_for_forks,
            "complete": p.complete,
        });
    }
    Ok(Answer { body, timing: None, bookmark: Some(bookmark), file: None })
}
