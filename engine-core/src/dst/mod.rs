//! Deterministic simulation: a host whose clock and randomness come from a seed, so that a
//! simulated run (the crash gate) replays exactly, store operation for store operation.
//! The seeded fault injector lives with the in-memory store ([`crate::mem_store`]).

use std::sync::Mutex;

use async_trait::async_trait;

use crate::host::{Host, Sleeper};
use crate::mem_store::SplitMix64;

/// 2026-01-01T00:00:00Z: simulated clocks start here, so times look like real ones.
pub const SIM_EPOCH_MS: f64 = 1_767_225_600_000.0;

/// A seeded clock and random source. Every reading of the clock moves it forward by
/// `tick_ms` (code never observes the same instant twice, as on a real machine), and
/// [`SimHost::advance`] jumps it (a stall, a retention window passing).
pub struct SimHost {
    inner: Mutex<SimState>,
}

struct SimState {
    now_ms: f64,
    tick_ms: f64,
    rng: SplitMix64,
}

impl SimHost {
    pub fn new(seed: u64) -> Self {
        SimHost { inner: Mutex::new(SimState { now_ms: SIM_EPOCH_MS, tick_ms: 1.0, rng: SplitMix64(seed ^ 0x7157_D0B5) }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: f64) {
        self.lock().now_ms += ms;
    }


    /// The current time without moving the clock.
    pub fn peek_ms(&self) -> f64 {
        self.lock().now_ms
    }
}

impl Host for SimHost {
    fn now_ms(&self) -> f64 {
        let mut s = self.lock();
        s.now_ms += s.tick_ms;
        s.now_ms
    }

    fn fill_random(&self, buf: &mut [u8]) {
        let mut s = self.lock();
        for chunk in buf.chunks_mut(8) {
            let bytes = s.rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Sleeping in simulation moves the clock and lets other simulated tasks run once.
#[async_trait(?Send)]
impl Sleeper for SimHost {
    async fn sleep(&self, ms: f64) {
        self.advance(ms);
        YieldOnce(false).await;
    }
}

/// A database context's sleeper on a shared simulated host.
pub fn sleeper(host: &std::sync::Arc<SimHost>) -> std::rc::Rc<dyn Sleeper> {
    struct OnHost(std::sync::Arc<SimHost>);
    #[async_trait(?Send)]
    impl Sleeper for OnHost {
        async fn sleep(&self, ms: f64) {
            self.0.sleep(ms).await
        }
    }
    std::rc::Rc::new(OnHost(host.clone()))
}

struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
