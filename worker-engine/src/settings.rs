//! The Worker's settings, from its vars and secrets (all optional except access control):
//!
//! * `TWILL_TOKENS` (secret): the bearer tokens; or `TWILL_ALLOW_ANONYMOUS=true` (local
//!   runs: `make dev` sets it) to serve without any. With neither, every request is refused
//!   with `MISCONFIGURED`: a forgotten secret never leaves a database open.
//! * `TWILL_BATON_KEY` (secret): seals Hrana batons; interactive transactions need it.
//!   `TWILL_TX_IDLE_MS`: how long one may stay idle (default 15 s).
//! * `TWILL_CACHE_BYTES`, `TWILL_CHECKPOINT_RECORDS`, `TWILL_CHECKPOINT_BYTES`,
//!   `TWILL_GC_RETENTION_MS`, `TWILL_HISTORY_RETENTION_MS` (default 7 days; 0 keeps no
//!   history), `TWILL_MAX_STALENESS_MS`, `TWILL_MAX_VM_STEPS`,
//!   `TWILL_COMMIT_BUDGET_MS`: engine tuning.
//! * `TWILL_EMULATE_R2_LATENCY_MS`, `TWILL_EMULATE_R2_FAULTS`: local runs only.

use engine_core::cache::DEFAULT_CACHE_BYTES;
use engine_core::DbConfig;
use worker::Env;

use crate::auth::TokenRule;
use crate::baton::BatonKey;
use crate::wire::ApiError;

/// The R2 binding holding every database.
pub const BUCKET_BINDING: &str = "BUCKET";

fn text(env: &Env, name: &str) -> Option<String> {
    env.secret(name).ok().map(|v| v.to_string()).or_else(|| env.var(name).ok().map(|v| v.to_string()))
}

/// The R2 bucket every database lives in.
pub fn bucket(env: &Env) -> Result<worker::Bucket, ApiError> {
    env.bucket(BUCKET_BINDING)
        .map_err(|_| ApiError::new(500, "MISCONFIGURED", format!("R2 binding {BUCKET_BINDING} is missing")))
}

/// A store over the bucket, as configured for local runs (emulated latency and faults).
pub fn r2_store(env: &Env) -> Result<r2_backend::R2Store, ApiError> {
    Ok(r2_backend::R2Store::new(bucket(env)?)
        .with_emulated_latency(emulated_r2_latency_ms(env))
        .with_faults(emulated_r2_faults(env)?))
}

pub fn number(env: &Env, name: &str) -> Option<f64> {
    text(env, name).and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0)
}

pub fn db_config(env: &Env) -> DbConfig {
    let mut c = DbConfig::default();
    if let Some(v) = number(env, "TWILL_CHECKPOINT_RECORDS") {
        c.checkpoint_records = v as u64;
    }
    if let Some(v) = number(env, "TWILL_CHECKPOINT_BYTES") {
        c.checkpoint_bytes = v as u64;
    }
    if let Some(v) = number(env, "TWILL_GC_RETENTION_MS") {
        c.gc_retention_ms = v;
    }
    if let Some(v) = number(env, "TWILL_HISTORY_RETENTION_MS") {
        c.history_retention_ms = v;
    }
    if let Some(v) = number(env, "TWILL_MAX_STALENESS_MS") {
        c.max_staleness_ms = v;
    }
    if let Some(v) = number(env, "TWILL_MAX_VM_STEPS") {
        c.limits.max_vm_steps = v as u64;
    }
    if let Some(v) = number(env, "TWILL_COMMIT_BUDGET_MS") {
        c.commit_budget_ms = v;
    }
    c
}

/// R2 calls one engine operation may make (`TWILL_MAX_R2_CALLS`; 0: unbounded). A Worker
/// invocation may make 1,000 calls to Cloudflare services on the free plan (10,000 paid):
/// past that the runtime fails the call, which would look like an R2 outage. Bounding it
/// here turns it into a named limit (`LIMIT_EXCEEDED`, R2_CALLS) before the call is made.
pub fn r2_call_budget(env: &Env) -> Option<u64> {
    match number(env, "TWILL_MAX_R2_CALLS") {
        Some(v) if v <= 0.0 => None,
        Some(v) => Some(v as u64),
        None => Some(DEFAULT_R2_CALL_BUDGET),
    }
}

/// The free plan's limit on subrequests per invocation, less a margin for the request's
/// own other calls.
pub const DEFAULT_R2_CALL_BUDGET: u64 = 950;

pub fn cache_bytes(env: &Env) -> usize {
    number(env, "TWILL_CACHE_BYTES").map_or(DEFAULT_CACHE_BYTES, |v| v as usize)
}

/// `TWILL_EMULATE_R2_LATENCY_MS`, for local runs only (see `R2Store::with_emulated_latency`).
pub fn emulated_r2_latency_ms(env: &Env) -> u64 {
    number(env, "TWILL_EMULATE_R2_LATENCY_MS").unwrap_or(0.0).min(10_000.0) as u64
}

/// `TWILL_EMULATE_R2_FAULTS`, for local runs only (see `r2_backend::FaultPlan`).
pub fn emulated_r2_faults(env: &Env) -> Result<Option<r2_backend::FaultPlan>, ApiError> {
    text(env, "TWILL_EMULATE_R2_FAULTS")
        .filter(|t| !t.trim().is_empty())
        .map(|t| r2_backend::FaultPlan::parse(&t).map_err(|m| ApiError::new(500, "MISCONFIGURED", m)))
        .transpose()
}

/// Who may do what: the token list, or anonymous access where it was asked for.
pub enum AccessRules {
    Tokens(Vec<TokenRule>),
    Anonymous,
}

pub fn access_rules(env: &Env) -> Result<AccessRules, ApiError> {
    let rules = crate::auth::parse_rules(text(env, "TWILL_TOKENS"))?;
    if !rules.is_empty() {
        return Ok(AccessRules::Tokens(rules));
    }
    match text(env, "TWILL_ALLOW_ANONYMOUS").as_deref().map(str::trim) {
        Some("true") => Ok(AccessRules::Anonymous),
        _ => Err(ApiError::new(
            500,
            "MISCONFIGURED",
            "no access control is configured: set the secret TWILL_TOKENS (wrangler secret put TWILL_TOKENS), \
             or set TWILL_ALLOW_ANONYMOUS=true for a local, private deployment",
        )),
    }
}

/// The baton key, if one is configured (a configured key that is too short is an error).
pub fn baton_key(env: &Env) -> Result<Option<BatonKey>, ApiError> {
    text(env, "TWILL_BATON_KEY").filter(|k| !k.trim().is_empty()).map(|k| BatonKey::from_secret(k.trim())).transpose()
}
