//! Database administration: `GET /v1/db` (the databases, paged), `GET /v1/db/{name}` (one
//! database's size, newest commit, checkpoint, history window, deletion and fork origin) and
//! `DELETE /v1/db/{name}[?purge=true]`; and the scheduled sweep that purges databases deleted
//! longer ago than the history window (nothing else runs on them, so nothing else would).

use std::rc::Rc;

use engine_core::bookmark::Bookmark;
use engine_core::catalog::{self, ListRequest, LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT};
use engine_core::store::{CountingStore, ObjectStore};
use engine_core::{DeleteMode, HistoryWindow, ReadFrom};
use futures::FutureExt;
use serde_json::{json, Value};
use worker::Env;

use crate::auth::{self, Access};
use crate::db_request::DbRequest;
use crate::settings;
use crate::wire::{self, validate_db_name, ApiError};
use crate::Answer;

/// What `GET /v1/db` was asked for, from its query string.
pub struct ListQuery {
    pub after: Option<String>,
    pub limit: Option<String>,
    pub deleted: Option<String>,
}

/// `GET /v1/db[?limit=&after=&deleted=true]`: databases in key order, those the token may
/// see; `next` names the `after` of the next page (absent on the last).
pub async fn list(env: &Env, caller: &auth::Caller<'_>, query: ListQuery) -> Result<Answer, ApiError> {
    let limit = match query.limit.as_deref() {
        None => LIST_DEFAULT_LIMIT,
        Some(text) => text.parse::<usize>().ok().filter(|n| (1..=LIST_MAX_LIMIT).contains(n)).ok_or_else(|| {
            ApiError::bad_request("INVALID_REQUEST", format!("limit must be 1 to {LIST_MAX_LIMIT}, not {text:?}"))
        })?,
    };
    if let Some(after) = &query.after {
        validate_db_name(after)?;
    }
    let include_deleted = wire::flag("deleted", query.deleted.as_deref())?;
    let settings = settings::get(env);
    let r2: Rc<dyn ObjectStore> = Rc::new(settings.r2_store()?);
    let store = CountingStore::new(r2);
    store.budget_calls(settings.r2_call_budget);
    let request = ListRequest { after: query.after.as_deref(), limit, include_deleted };
    let page = catalog::list_databases(&store, "", request, settings.db_config.fetch_concurrency).await?;
    let databases: Vec<Value> = page
        .databases
        .iter()
        .filter(|d| caller.access_to(Some(&d.name)).is_ok())
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
    let config = settings::get(env).db_config;
    let head = info.history.head;
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
    Ok(Answer { body: crate::Body::Value(body), timing: None, bookmark: Some(head), file: None })
}

/// `DELETE /v1/db/{name}[?purge=true]`: the database becomes empty, as one commit. Its
/// history stays: restoring `previous` undoes the deletion until it leaves the window, and
/// GC takes the old objects after that. With `purge=true` the history ends at the deletion
/// and the old state's objects are deleted now (those its forks use stay); a purge cut
/// short by its call budget says so (`purge.complete: false`): deleting again finishes it.
/// The old state's log records stay for the GC window (`purge.log_records_left`): readers and
/// writers prove a record absent by time, so none is deleted sooner; the scheduled sweep
/// deletes them after it.
pub async fn delete(db: DbRequest, purge: Option<&str>) -> Result<Answer, ApiError> {
    if db.access != Access::Write {
        return Err(auth::read_only_error());
    }
    let mode = if wire::flag("purge", purge)? { DeleteMode::Purge } else { DeleteMode::KeepHistory };
    let name = db.name.clone();
    let (deleted, r2) = db.exclusive(move |d| d.delete(mode).boxed_local()).await?;
    let bookmark = deleted.bookmark;
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
            "log_records_left": p.log_records_left,
        });
    }
    Ok(Answer { body: crate::Body::Value(body), timing: None, bookmark: Some(bookmark), file: None })
}

/// Deleted databases one scheduled run purges (or whose purged log it deletes) at most: each
/// may make 400 R2 calls, and an invocation 1,000 on the free plan (the listing takes the rest).
const EXPIRIES_PER_RUN: usize = 1;
/// Listing pages (of 100 databases, one manifest GET each) one scheduled run reads.
const SWEEP_PAGES: usize = 3;
const SWEEP_PAGE_LIMIT: usize = 100;

/// What one scheduled sweep did.
pub struct Sweep {
    pub listed: usize,
    pub expired: Vec<String>,
    /// Purged databases whose log records before the deletion this run deleted.
    pub logs_swept: Vec<String>,
}

/// What the scheduled sweep has to do for one deleted database.
enum SweepDue {
    /// Deleted longer ago than the retention window: purge it.
    Expire(String),
    /// Purged longer ago than the GC window: delete the log records it left.
    PurgedLog(String),
}

/// The scheduled sweep (the Worker's cron trigger): finds databases whose deletion is older
/// than the retention window and not yet purged, and purges them ([`engine_core::Database::expire_deletion`],
/// which checks again and gives way to a writer that used the name since). Each run starts
/// at a random point of the names and wraps around, so run after run every database is
/// reached whatever their number.
pub async fn expire_deletions(env: &Env) -> Result<Sweep, ApiError> {
    let settings = settings::get(env);
    let config = settings.db_config;
    let retention_ms = config.gc_retention_ms.max(config.history_retention_ms);
    let log_delay_ms = config.gc_retention_ms;
    let now = js_sys::Date::now();
    let r2: Rc<dyn ObjectStore> = Rc::new(settings.r2_store()?);
    let store = CountingStore::new(r2);
    store.budget_calls(settings.r2_call_budget);
    const STARTS: &str = "0123456789abcdefghijklmnopqrstuvwxyz";
    let pick = (js_sys::Math::random() * (STARTS.len() + 1) as f64) as usize;
    let start: Option<String> = STARTS.get(pick..pick + 1).map(str::to_string);
    let mut after = start.clone();
    let mut wrapped = start.is_none();
    let mut sweep = Sweep { listed: 0, expired: Vec::new(), logs_swept: Vec::new() };
    let mut candidates = Vec::new();
    for _ in 0..SWEEP_PAGES {
        let request = ListRequest { after: after.as_deref(), limit: SWEEP_PAGE_LIMIT, include_deleted: true };
        let page = catalog::list_databases(&store, "", request, config.fetch_concurrency).await?;
        sweep.listed += page.databases.len();
        candidates.extend(page.databases.into_iter().filter_map(|d| {
            let deleted_ms = d.deleted?.committed_ms as f64;
            if !d.purged && deleted_ms + retention_ms <= now {
                Some(SweepDue::Expire(d.name))
            } else if d.purge_log_pending && deleted_ms + log_delay_ms <= now {
                Some(SweepDue::PurgedLog(d.name))
            } else {
                None
            }
        }));
        if candidates.len() >= EXPIRIES_PER_RUN {
            break;
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None if !wrapped => {
                wrapped = true;
                after = None;
            }
            None => break,
        }
    }
    for due in candidates.into_iter().take(EXPIRIES_PER_RUN) {
        match due {
            SweepDue::Expire(name) => {
                let db = DbRequest::new(env, &name, Access::Write, ReadFrom::Latest)?;
                let (expired, _) = db.exclusive(|d| d.expire_deletion().boxed_local()).await?;
                if expired.is_some() {
                    sweep.expired.push(name);
                }
            }
            SweepDue::PurgedLog(name) => {
                let db = DbRequest::new(env, &name, Access::Write, ReadFrom::Latest)?;
                let (swept, _) = db.exclusive(|d| d.sweep_purged_log().boxed_local()).await?;
                if swept.is_some() {
                    sweep.logs_swept.push(name);
                }
            }
        }
    }
    Ok(sweep)
}
