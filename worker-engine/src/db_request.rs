//! Running one request on a database: through this isolate's registry (grouped with
//! concurrent requests), measured, with the `meta` every answer carries.

use std::sync::Arc;

use engine_core::bookmark::Bookmark;
use std::rc::Rc;

use engine_core::cache::{CacheStats, PageCache};
use engine_core::store::StoreCounts;
use engine_core::{Database, DbConfig, Done, EngineError, ReadFrom, Request, Work};
use futures::future::LocalBoxFuture;
use serde::Serialize;
use worker::Env;

use crate::auth::Access;
use crate::registry;
use crate::settings;
use crate::wire::ApiError;

/// Header naming how stale (in ms) a read-only answer may be; 0 (the default) means it
/// reflects every commit acknowledged before the request began.
pub const STALENESS_HEADER: &str = "x-twill-max-staleness-ms";

/// Everything a database request needs once it is authorized.
pub struct DbRequest {
    pub name: String,
    pub access: Access,
    config: DbConfig,
    cache: Arc<PageCache>,
    /// How fresh read-only answers must be, unless the work says otherwise.
    pub read_from: ReadFrom,
    /// R2 calls one engine operation may make (see [`settings::Settings::r2_call_budget`]).
    r2_calls: Option<u64>,
    settings: Rc<settings::Settings>,
}

/// A request's durable reply with its `meta` and `Server-Timing` entry.
pub struct Performed {
    pub done: Done,
    pub meta: Meta,
    pub timing: String,
}

/// What a request did, as every answer's `meta` says: its time, the commit it reflects,
/// rows, log records, R2 calls and page-cache use.
#[derive(Serialize)]
pub struct Meta {
    pub duration_ms: f64,
    pub bookmark: Bookmark,
    pub rows_read: u64,
    pub rows_written: u64,
    pub log_records_applied: u64,
    pub log_records_committed: u64,
    pub commit_retries: u32,
    pub r2_reads: u64,
    pub r2_writes: u64,
    pub r2_bytes_read: u64,
    pub r2_bytes_written: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
}

impl Performed {
    pub fn bookmark(&self) -> Bookmark {
        self.meta.bookmark
    }
}

/// The freshness a request asks for: a session's bookmark (header or body), else a
/// staleness bound (header), else the Worker's default.
pub fn read_from(config: &DbConfig, bookmark: Option<&str>, staleness: Option<&str>) -> Result<ReadFrom, ApiError> {
    if let Some(b) = bookmark {
        let b: Bookmark = b.trim().parse().map_err(ApiError::from)?;
        return Ok(ReadFrom::AtLeast(b.seq()));
    }
    if let Some(v) = staleness {
        let ms = v.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| {
            ApiError::bad_request("INVALID_REQUEST", format!("{STALENESS_HEADER} must be a non-negative number of ms"))
        })?;
        return Ok(if ms > 0.0 { ReadFrom::WithinMs(ms) } else { ReadFrom::Latest });
    }
    Ok(if config.max_staleness_ms > 0.0 { ReadFrom::WithinMs(config.max_staleness_ms) } else { ReadFrom::Latest })
}

impl DbRequest {
    /// For database `name` (already validated), with the caller's access and freshness.
    pub fn new(env: &Env, name: &str, access: Access, read_from: ReadFrom) -> Result<Self, ApiError> {
        let settings = settings::get(env);
        Ok(DbRequest {
            name: name.to_string(),
            access,
            config: settings.db_config,
            cache: registry::cache(settings.cache_bytes),
            read_from,
            r2_calls: settings.r2_call_budget,
            settings,
        })
    }

    /// This isolate's slot for the database (opening nothing yet; its store is made only
    /// if the slot is new).
    fn slot(&self) -> Result<Rc<registry::DbSlot>, ApiError> {
        registry::slot(&self.name, self.settings.waits, || self.settings.r2_store())
    }

    /// Runs `work` (grouped with concurrent requests) and measures it.
    pub async fn perform(self, work: Work, started: f64) -> Result<Performed, ApiError> {
        let slot = self.slot()?;
        let cache_before = self.cache.stats();
        let request = Request { work, read_from: self.read_from };
        let (done, r2) = slot.submit(&self.name, self.config, self.cache.clone(), self.r2_calls, request).await?;
        Ok(self.measured(done, r2, cache_before, started))
    }

    /// Runs `op` on the database alone (see [`registry::DbSlot::exclusive`]).
    pub async fn exclusive<T>(
        &self,
        op: impl for<'a> FnOnce(&'a mut Database) -> LocalBoxFuture<'a, Result<T, EngineError>>,
    ) -> Result<(T, StoreCounts), ApiError> {
        Ok(self.slot()?.exclusive(&self.name, self.config, self.cache.clone(), self.r2_calls, op).await?)
    }

    /// Runs `work` on a past state (an `as_of` read), found by `find` on the database.
    pub async fn perform_past(
        self,
        find: impl for<'a> FnOnce(&'a mut Database) -> LocalBoxFuture<'a, Result<Database, EngineError>>,
        work: Work,
        started: f64,
    ) -> Result<Performed, ApiError> {
        let cache_before = self.cache.stats();
        let slot = self.slot()?;
        let before = slot.store.counts();
        let (mut past, _) = slot.exclusive(&self.name, self.config, self.cache.clone(), self.r2_calls, find).await?;
        let request = Request { work, read_from: ReadFrom::Latest };
        slot.store.budget_calls(self.r2_calls);
        let done = past.perform(vec![request]).await.pop().unwrap_or_else(|| Err(EngineError::Internal("no reply".into())));
        slot.store.budget_calls(None);
        let done = done?;
        let r2 = slot.store.counts().since(&before);
        Ok(self.measured(done, r2, cache_before, started))
    }

    fn measured(&self, done: Done, r2: StoreCounts, cache_before: CacheStats, started: f64) -> Performed {
        let cache_after = self.cache.stats();
        let meta = Meta {
            duration_ms: js_sys::Date::now() - started,
            bookmark: Bookmark(done.stats.bookmark),
            rows_read: done.stats.rows_read,
            rows_written: done.stats.rows_written,
            log_records_applied: done.stats.records_applied,
            log_records_committed: done.stats.records_committed,
            commit_retries: done.stats.retries,
            r2_reads: r2.reads,
            r2_writes: r2.writes,
            r2_bytes_read: r2.bytes_read,
            r2_bytes_written: r2.bytes_written,
            cache_hits: cache_after.hits - cache_before.hits,
            cache_misses: cache_after.misses - cache_before.misses,
        };
        let timing = format!("r2;desc=\"{} reads, {} writes\"", r2.reads, r2.writes);
        Performed { done, meta, timing }
    }
}
