//! The HTTP endpoints: authorizing, reading the body, and answering `/query`, `/batch`,
//! `/exec`, `/stats` and Hrana pipelines.

use engine_core::guard::{check_script_statement, StatementKind};
use engine_core::script::{Action, Script, ScriptOutcome, Step, StepOutcome};
use engine_core::{ReadFrom, Reply, Work};
use serde_json::{json, Value};
use worker::Env;

use crate::auth::{self, Access};
use crate::db_request::{self, DbRequest, STALENESS_HEADER};
use crate::hrana::HranaRequest;
use crate::incoming::Incoming;
use crate::routes::{self, Endpoint};
use crate::wire::{self, validate_db_name, ApiError, BatchAnswer, ExecAnswer, Json, ResultAnswer};
use crate::{admin_api, export_api, history_api, hrana, import_api, registry, settings, upload_api, Answer, Body, BOOKMARK_HEADER};

pub async fn handle(req: Incoming, env: &Env, started: f64) -> Result<Answer, ApiError> {
    let rules = settings::get(env).access_rules()?;
    let authorization = req.header("authorization");
    // Nothing answers without a valid token; scope is checked per database below.
    let caller = auth::authenticate(&rules, authorization.as_deref())?;
    let route = routes::route(&req.method(), req.path())?;
    let Some(name) = route.database else {
        if route.endpoint == Endpoint::ListDatabases {
            let query = admin_api::ListQuery {
                after: req.query_param("after"),
                limit: req.query_param("limit"),
                deleted: req.query_param("deleted"),
            };
            return admin_api::list(env, &caller, query).await;
        }
        return Ok(Answer::json(crate::describe_service()));
    };
    validate_db_name(&name)?;
    let access = caller.access_to(Some(&name))?;
    match route.endpoint {
        Endpoint::Stats => return Ok(Answer::json(stats(&name, env))),
        Endpoint::HranaVersion(v) => {
            return Ok(Answer::json(json!({ "protocol": "hrana", "version": v, "encoding": "json" })))
        }
        Endpoint::History => {
            let at = req.query_param("at");
            let db = DbRequest::new(env, &name, access, ReadFrom::Latest)?;
            return history_api::history(db, at.as_deref()).await;
        }
        Endpoint::Export => {
            let as_of = req.query_param("as_of");
            let format = export_api::ExportFormat::parse(req.query_param("format").as_deref())?;
            let db = DbRequest::new(env, &name, access, ReadFrom::Latest)?;
            return export_api::export(db, as_of.as_deref(), &name, format).await;
        }
        Endpoint::Delete => {
            let purge = req.query_param("purge");
            return admin_api::delete(DbRequest::new(env, &name, access, ReadFrom::Latest)?, purge.as_deref()).await;
        }
        Endpoint::Info => return admin_api::info(DbRequest::new(env, &name, access, ReadFrom::Latest)?, env).await,
        Endpoint::Import => {
            if access != Access::Write {
                return Err(auth::read_only_error());
            }
            let replace = wire::flag("replace", req.query_param("replace").as_deref())?;
            let db = DbRequest::new(env, &name, access, ReadFrom::Latest)?;
            return import_api::import(db, &req, replace).await;
        }
        Endpoint::Upload(step) => {
            if access != Access::Write {
                return Err(auth::read_only_error());
            }
            let body = match step {
                routes::UploadStep::Begin | routes::UploadStep::Complete => Some(req.body().await?),
                _ => None,
            };
            let db = DbRequest::new(env, &name, access, ReadFrom::Latest)?;
            return upload_api::handle(db, &req, step, route.upload.clone(), body).await;
        }
        _ => {}
    }
    let body = req.body().await?;
    let config = settings::get(env).db_config;
    let bookmark = req.header(BOOKMARK_HEADER);
    let staleness = req.header(STALENESS_HEADER);
    match route.endpoint {
        Endpoint::Hrana(kind) => {
            let read_from = db_request::read_from(&config, bookmark.as_deref(), staleness.as_deref())?;
            hrana_request(DbRequest::new(env, &name, access, read_from)?, env, &body, kind, started).await
        }
        Endpoint::Exec => {
            let sql = wire::parse_exec(&body)?;
            let read_from = db_request::read_from(&config, bookmark.as_deref(), staleness.as_deref())?;
            exec(DbRequest::new(env, &name, access, read_from)?, sql, started).await
        }
        Endpoint::Restore => {
            if access != Access::Write {
                return Err(auth::read_only_error());
            }
            history_api::restore(DbRequest::new(env, &name, access, ReadFrom::Latest)?, &body).await
        }
        Endpoint::Fork => {
            let request = history_api::parse_fork(&body)?;
            validate_db_name(&request.to)?;
            // Forking reads this database and creates the other: both need the token's say.
            if caller.access_to(Some(&request.to))? != Access::Write {
                return Err(auth::read_only_error());
            }
            history_api::fork(DbRequest::new(env, &name, access, ReadFrom::Latest)?, request).await
        }
        Endpoint::Query | Endpoint::Batch => {
            let parsed = if route.endpoint == Endpoint::Query { wire::parse_query(&body)? } else { wire::parse_batch(&body)? };
            let as_of = req.header(history_api::AS_OF_HEADER).or(parsed.as_of).map(|p| history_api::Point::parse(&p)).transpose()?;
            let bookmark = bookmark.or(parsed.bookmark);
            let read_from = db_request::read_from(&config, bookmark.as_deref(), staleness.as_deref())?;
            let db = DbRequest::new(env, &name, access, read_from)?;
            // A read of a past commit refuses writes itself (whatever the token).
            if db.access == Access::Read && as_of.is_none() {
                auth::check_read_only(&parsed.statements)?;
            }
            let work = Work::Transaction(parsed.statements);
            let performed = match as_of {
                Some(point) => history_api::read_as_of(db, point, work, started).await?,
                None => db.perform(work, started).await?,
            };
            let bookmark = performed.bookmark();
            let Reply::Transaction(results) = performed.done.reply else {
                return Err(crate::internal("a transaction was answered as a script"));
            };
            let meta = &performed.meta;
            let text = if route.endpoint == Endpoint::Query {
                crate::encode(&ResultAnswer::<Json>::new(&results[0], Some(meta)))?
            } else {
                let results = results.iter().map(|result| ResultAnswer::new(result, None)).collect();
                crate::encode(&BatchAnswer::<Json> { results, meta })?
            };
            Ok(Answer { body: Body::Encoded(text), timing: Some(performed.timing), bookmark: Some(bookmark), file: None })
        }
        Endpoint::Describe
        | Endpoint::Stats
        | Endpoint::HranaVersion(_)
        | Endpoint::History
        | Endpoint::Export
        | Endpoint::Import
        | Endpoint::Upload(_)
        | Endpoint::ListDatabases
        | Endpoint::Info
        | Endpoint::Delete => {
            Err(crate::internal("unreachable route"))
        }
    }
}

async fn hrana_request(mut db: DbRequest, env: &Env, body: &[u8], kind: HranaRequest, started: f64) -> Result<Answer, ApiError> {
    let settings = settings::get(env);
    let key = settings.baton_key()?;
    let tx_idle_ms = settings.tx_idle_ms;
    let ctx = hrana::Context { db: &db.name, key: key.as_ref(), now_ms: started, tx_idle_ms };
    let mut plan = kind.plan(body, &ctx)?;
    if db.access == Access::Read && plan.kind()? != StatementKind::Read {
        return Err(auth::read_only_error());
    }
    if plan.is_empty() {
        // Only stored SQL, closes or refused statements: nothing for the engine.
        let body = kind.answer(plan, &ScriptOutcome::default(), None, &ctx)?;
        return Ok(Answer { body, timing: None, bookmark: None, file: None });
    }
    // A transaction continues on a state at least as new as the one it last ran on.
    if let Some(seen) = plan.min_seq() {
        db.read_from = match db.read_from {
            ReadFrom::AtLeast(b) => ReadFrom::AtLeast(b.max(seen)),
            _ => ReadFrom::AtLeast(seen),
        };
    }
    let name = db.name.clone();
    // The answer needs the plan's bookkeeping, not its script: the script moves to the engine.
    let script = std::mem::take(&mut plan.script);
    let performed = db.perform(Work::Script(script), started).await?;
    let bookmark = performed.bookmark();
    let Reply::Script(outcome) = &performed.done.reply else {
        return Err(crate::internal("a script was answered as a transaction"));
    };
    let ctx = hrana::Context { db: &name, key: key.as_ref(), now_ms: started, tx_idle_ms };
    let body = kind.answer(plan, outcome, Some(&performed.meta), &ctx)?;
    Ok(Answer { body, timing: Some(performed.timing), bookmark: Some(bookmark), file: None })
}

/// Statements separated by semicolons, each committed as it runs (D1's exec):
/// `{count, duration, meta}`. Stops at the first failing statement; if earlier ones
/// committed, the error says how many (`EXEC_PARTIAL`), never that nothing changed.
pub(crate) async fn exec(db: DbRequest, sql: String, started: f64) -> Result<Answer, ApiError> {
    let statements = engine_core::guard::split_statements(&sql);
    // Refuse what may not run before anything runs.
    for s in &statements {
        let kind = check_script_statement(s)?;
        if db.access == Access::Read && kind != StatementKind::Read {
            return Err(auth::read_only_error());
        }
    }
    if statements.is_empty() {
        return Err(ApiError::bad_request("INVALID_REQUEST", "sql holds no statement"));
    }
    let count = statements.len();
    let steps = statements
        .into_iter()
        .enumerate()
        .map(|(i, sql)| {
            let action = Action::Execute(engine_core::Statement::new(sql));
            // Each statement runs only if the one before it succeeded.
            let condition = (i > 0).then(|| engine_core::script::Cond::Ok(i - 1));
            Step { condition, action }
        })
        .collect();
    let performed = db.perform(Work::Script(Script::new(steps)), started).await?;
    let bookmark = performed.bookmark();
    let Reply::Script(outcome) = &performed.done.reply else {
        return Err(crate::internal("a script was answered as a transaction"));
    };
    if let Some((i, e)) = outcome.steps.iter().enumerate().find_map(|(i, s)| match s {
        StepOutcome::Failed(e) => Some((i, e)),
        _ => None,
    }) {
        let mut error = ApiError::from(e.clone());
        if i > 0 {
            error.code = "EXEC_PARTIAL";
            error.message = format!(
                "statement {} failed: {}; the {i} statement(s) before it ran and are committed",
                i + 1,
                error.message
            );
        }
        return Err(error);
    }
    let text = crate::encode(&ExecAnswer { count, duration: performed.meta.duration_ms, meta: &performed.meta })?;
    Ok(Answer { body: Body::Encoded(text), timing: Some(performed.timing), bookmark: Some(bookmark), file: None })
}

/// The isolate's wasm linear memory in bytes: it only grows, so this is also its peak.
fn wasm_memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return core::arch::wasm32::memory_size(0) as u64 * 65536;
    #[cfg(not(target_arch = "wasm32"))]
    0
}

fn stats(name: &str, env: &Env) -> Value {
    let c = registry::cache(settings::get(env).cache_bytes).stats();
    let cache = json!({
        "bytes": c.bytes, "budget_bytes": c.budget, "entries": c.entries,
        "hits": c.hits, "misses": c.misses, "evictions": c.evictions,
    });
    let Some(slot) = registry::existing_slot(name) else {
        return json!({ "database": name, "open_in_this_isolate": false, "cache": cache, "wasm_memory_bytes": wasm_memory_bytes() });
    };
    let r2 = slot.store.counts();
    let at = slot.positions().unwrap_or_default();
    json!({
        "database": name,
        "open_in_this_isolate": true,
        "opens": slot.opens.get(),
        "applied_seq": at.applied_seq,
        "checkpoint_seq": at.checkpoint_seq,
        "unfolded_log_bytes": at.unfolded_log_bytes,
        "r2": { "reads": r2.reads, "writes": r2.writes, "bytes_read": r2.bytes_read, "bytes_written": r2.bytes_written },
        "cache": cache,
        "parsed_page_cache_pages": slot.parsed_pages(),
        "wasm_memory_bytes": wasm_memory_bytes(),
    })
}

