//! The Worker's settings, from its vars and secrets (all optional except access control):
//!
//! * `TWILL_TOKENS` (secret): the bearer tokens; or `TWILL_ALLOW_ANONYMOUS=true` (local
//!   runs: `make dev` sets it) to serve without any. With neither, every request is refused
//!   with `MISCONFIGURED`: a forgotten secret never leaves a database open.
//! * `TWILL_BATON_KEY` (secret): seals Hrana batons; interactive transactions need it.
//!   `TWILL_TX_IDLE_MS`: how long one may stay idle (default 15 s).
//! * `TWILL_QUEUE_WAIT_MS` (default 30 s), `TWILL_HOLD_LIMIT_MS` (default 120 s): how long a
//!   request waits for its turn on a database in an isolate, and how long one may hold it.
//! * `TWILL_CACHE_BYTES`, `TWILL_CHECKPOINT_RECORDS`, `TWILL_CHECKPOINT_BYTES`,
//!   `TWILL_CHECKPOINT_INTERVAL_MS` (default 1 s), `TWILL_QUIET_CHECKPOINT_BYTES` (default
//!   256 KiB), `TWILL_GC_RETENTION_MS`, `TWILL_HISTORY_RETENTION_MS` (default 7 days; 0 keeps no
//!   history), `TWILL_MAX_STALENESS_MS`, `TWILL_MAX_VM_STEPS`, `TWILL_MAX_WRITE_BYTES`,
//!   `TWILL_COMMIT_BUDGET_MS`: engine tuning.
//! * `TWILL_EMULATE_R2_LATENCY_MS`, `TWILL_EMULATE_R2_FAULTS`: local runs only.

use engine_core::cache::DEFAULT_CACHE_BYTES;
use engine_core::DbConfig;
use std::cell::OnceCell;
use std::rc::Rc;

use worker::Env;

use crate::auth::Grant;
use crate::baton::BatonKey;
use crate::wire::ApiError;

/// The R2 binding holding every database.
pub const BUCKET_BINDING: &str = "BUCKET";

/// Every setting, read from the Worker's vars and secrets once per isolate: they cannot change
/// under a running isolate (a new deployment or secret starts new isolates), and reading them
/// costs about forty calls into JS, which a warm request should not pay each time.
pub struct Settings {
    pub db_config: DbConfig,
    pub cache_bytes: usize,
    /// R2 calls one engine operation may make (`TWILL_MAX_R2_CALLS`; None: unbounded). A Worker
    /// invocation may make 1,000 calls to Cloudflare services on the free plan (10,000 paid):
    /// past that the runtime fails the call, which would look like an R2 outage. Bounding it
    /// here turns it into a named limit (`LIMIT_EXCEEDED`, R2_CALLS) before the call is made.
    pub r2_call_budget: Option<u64>,
    /// `TWILL_EMULATE_R2_LATENCY_MS`, for local runs only (see `R2Store::with_emulated_latency`).
    pub emulated_r2_latency_ms: u64,
    /// `TWILL_EMULATE_R2_FAULTS`, for local runs only (see `r2_backend::FaultPlan`).
    emulated_r2_faults: Result<Option<r2_backend::FaultPlan>, ApiError>,
    access_rules: Result<Rc<AccessRules>, ApiError>,
    baton_key: Result<Option<BatonKey>, ApiError>,
    /// How long an interactive transaction may stay idle (`TWILL_TX_IDLE_MS`).
    pub tx_idle_ms: f64,
    /// How long a request waits for a database, and a hold may last, in this isolate.
    pub waits: crate::registry::Waits,
    /// The R2 binding (the same object for every request of the isolate, as the open
    /// databases' stores already rely on).
    bucket: Result<worker::Bucket, ApiError>,
}

thread_local! {
    static SETTINGS: OnceCell<Rc<Settings>> = const { OnceCell::new() };
}

/// This isolate's settings (read from `env` on the first request).
pub fn get(env: &Env) -> Rc<Settings> {
    SETTINGS.with(|cell| cell.get_or_init(|| Rc::new(Settings::read(env))).clone())
}

impl Settings {
    fn read(env: &Env) -> Settings {
        let text = |name: &str| -> Option<String> {
            env.secret(name).ok().map(|v| v.to_string()).or_else(|| env.var(name).ok().map(|v| v.to_string()))
        };
        let number =
            |name: &str| text(name).and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0);
        let mut c = DbConfig::default();
        if let Some(v) = number("TWILL_CHECKPOINT_RECORDS") {
            c.checkpoint_records = v as u64;
        }
        if let Some(v) = number("TWILL_CHECKPOINT_BYTES") {
            c.checkpoint_bytes = v as u64;
        }
        if let Some(v) = number("TWILL_CHECKPOINT_INTERVAL_MS") {
            c.checkpoint_min_interval_ms = v;
        }
        if let Some(v) = number("TWILL_QUIET_CHECKPOINT_BYTES") {
            c.quiet_checkpoint_bytes = v as u64;
        }
        if let Some(v) = number("TWILL_GC_RETENTION_MS") {
            c.gc_retention_ms = v;
        }
        if let Some(v) = number("TWILL_HISTORY_RETENTION_MS") {
            c.history_retention_ms = v;
        }
        if let Some(v) = number("TWILL_MAX_STALENESS_MS") {
            c.max_staleness_ms = v;
        }
        if let Some(v) = number("TWILL_MAX_VM_STEPS") {
            c.limits.max_vm_steps = v as u64;
        }
        if let Some(v) = number("TWILL_MAX_WRITE_BYTES") {
            c.limits.max_write_bytes = v as u64;
        }
        if let Some(v) = number("TWILL_COMMIT_BUDGET_MS") {
            c.commit_budget_ms = v;
        }
        Settings {
            db_config: c,
            cache_bytes: number("TWILL_CACHE_BYTES").map_or(DEFAULT_CACHE_BYTES, |v| v as usize),
            r2_call_budget: match number("TWILL_MAX_R2_CALLS") {
                Some(v) if v <= 0.0 => None,
                Some(v) => Some(v as u64),
                None => Some(DEFAULT_R2_CALL_BUDGET),
            },
            emulated_r2_latency_ms: number("TWILL_EMULATE_R2_LATENCY_MS").unwrap_or(0.0).min(10_000.0) as u64,
            emulated_r2_faults: text("TWILL_EMULATE_R2_FAULTS")
                .filter(|t| !t.trim().is_empty())
                .map(|t| r2_backend::FaultPlan::parse(&t).map_err(|m| ApiError::new(500, "MISCONFIGURED", m)))
                .transpose(),
            access_rules: access_rules(text("TWILL_TOKENS"), text("TWILL_ALLOW_ANONYMOUS")).map(Rc::new),
            baton_key: text("TWILL_BATON_KEY")
                .filter(|k| !k.trim().is_empty())
                .map(|k| BatonKey::from_secret(k.trim()))
                .transpose(),
            tx_idle_ms: number("TWILL_TX_IDLE_MS").unwrap_or(crate::baton::TX_IDLE_MS),
            waits: {
                let default = crate::registry::Waits::default();
                crate::registry::Waits {
                    queue_ms: number("TWILL_QUEUE_WAIT_MS").unwrap_or(default.queue_ms),
                    hold_ms: number("TWILL_HOLD_LIMIT_MS").unwrap_or(default.hold_ms),
                }
            },
            bucket: env.bucket(BUCKET_BINDING).map_err(|_| {
                ApiError::new(500, "MISCONFIGURED", format!("R2 binding {BUCKET_BINDING} is missing"))
            }),
        }
    }

    /// Who may do what (a misconfiguration answers every request with its error).
    pub fn access_rules(&self) -> Result<Rc<AccessRules>, ApiError> {
        self.access_rules.clone()
    }

    /// The baton key, if one is configured (a configured key that is too short is an error).
    pub fn baton_key(&self) -> Result<Option<BatonKey>, ApiError> {
        self.baton_key.clone()
    }

    pub fn emulated_r2_faults(&self) -> Result<Option<r2_backend::FaultPlan>, ApiError> {
        self.emulated_r2_faults.clone()
    }

    /// The R2 bucket every database lives in.
    pub fn bucket(&self) -> Result<worker::Bucket, ApiError> {
        self.bucket.clone()
    }

    /// A store over the bucket, as configured for local runs (emulated latency and faults).
    pub fn r2_store(&self) -> Result<r2_backend::R2Store, ApiError> {
        Ok(r2_backend::R2Store::new(self.bucket()?)
            .with_emulated_latency(self.emulated_r2_latency_ms)
            .with_faults(self.emulated_r2_faults()?))
    }
}

/// The free plan's limit on subrequests per invocation, less a margin for the request's
/// own other calls.
pub const DEFAULT_R2_CALL_BUDGET: u64 = 950;

/// Who may do what: the token list, or anonymous access where it was asked for.
pub enum AccessRules {
    Tokens(Vec<Grant>),
    Anonymous,
}

fn access_rules(tokens: Option<String>, allow_anonymous: Option<String>) -> Result<AccessRules, ApiError> {
    let rules = crate::auth::parse_rules(tokens)?;
    if !rules.is_empty() {
        return Ok(AccessRules::Tokens(rules));
    }
    match allow_anonymous.as_deref().map(str::trim) {
        Some("true") => Ok(AccessRules::Anonymous),
        _ => Err(ApiError::new(
            500,
            "MISCONFIGURED",
            "no access control is configured: set the secret TWILL_TOKENS (wrangler secret put TWILL_TOKENS), \
             or set TWILL_ALLOW_ANONYMOUS=true for a local, private deployment",
        )),
    }
}
