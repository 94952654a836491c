//! What the engine takes from the machine it runs on: the wall clock and randomness.
//! In the Worker they come from JS (`Date.now()`, `crypto.getRandomValues`); natively from
//! std and the OS. Simulation injects a [`crate::dst::SimHost`] so a seed replays exactly.

use std::sync::Arc;

use async_trait::async_trait;

pub trait Host: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> f64;
    /// Fills `buf` with random bytes.
    fn fill_random(&self, buf: &mut [u8]);
}

/// The real clock and randomness of the platform.
pub struct SystemHost;

impl Host for SystemHost {
    fn now_ms(&self) -> f64 {
        system_now_ms()
    }

    fn fill_random(&self, buf: &mut [u8]) {
        // getrandom only fails when the platform has no source at all; a zeroed nonce would
        // still be correct (nonces only disambiguate our own retries), just less unique.
        let _ = getrandom::fill(buf);
    }
}

/// Waiting, for backoff between commit attempts: a timer in the Worker, a simulated clock
/// in simulation.
#[async_trait(?Send)]
pub trait Sleeper {
    async fn sleep(&self, ms: f64);
}

/// Returns at once (native tests and tools that have no timer to wait on).
pub struct NoSleep;

#[async_trait(?Send)]
impl Sleeper for NoSleep {
    async fn sleep(&self, _ms: f64) {}
}

/// The platform's host, shared.
pub fn system() -> Arc<dyn Host> {
    Arc::new(SystemHost)
}

#[cfg(feature = "wasm")]
fn system_now_ms() -> f64 {
    js_sys::Date::now()
}

#[cfg(not(feature = "wasm"))]
fn system_now_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

/// Random bytes as a lowercase hex string of `2 * bytes` characters.
pub fn random_hex(host: &dyn Host, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    host.fill_random(&mut buf);
    hex::encode(buf)
}

thread_local! {
    /// While an interactive transaction runs, the time SQL sees as "now".
    static SQL_CLOCK_PIN: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };
}

/// Makes SQL's clock (`datetime('now')`, `CURRENT_TIMESTAMP`) read `ms` until unpinned
/// (`None`), so a transaction replayed in a later request sees the same "now". Takes
/// effect where the platform's clock is ours (the Worker's wasm std calls
/// [`sql_clock_ms`]); native builds read the OS clock directly.
pub fn pin_sql_clock(ms: Option<f64>) {
    SQL_CLOCK_PIN.with(|p| p.set(ms));
}

/// The time SQL sees: the pinned time if a transaction pinned it, else `now()`.
pub fn sql_clock_ms(now: impl FnOnce() -> f64) -> f64 {
    SQL_CLOCK_PIN.with(|p| p.get()).unwrap_or_else(now)
}
