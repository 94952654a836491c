//! Shared pieces of the native benchmarks (see `make bench` and `benches/README.md`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use async_trait::async_trait;
use engine_core::mem_store::SplitMix64;
use engine_core::store::{ByteRange, FolderPage, ListPage, Object, ObjectMeta, ObjectStore, PutCondition, PutOutcome, StoreError};

/// Simulated object-store latency: every call waits `base ± jitter` (uniform) before it
/// reaches the inner store, like a round trip to R2 from a Worker.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub write: Duration,
    pub read: Duration,
    /// Fraction of the base latency added or taken away at random (0.25 = ±25%).
    pub jitter: f64,
}

impl Latency {
    pub const NONE: Latency = Latency { write: Duration::ZERO, read: Duration::ZERO, jitter: 0.0 };
}

/// A store wrapper for benchmarks: simulated latency (needs a tokio runtime when non-zero)
/// and an optional trace of every call, to see what a request costs.
pub struct SimStore<S: ?Sized> {
    inner: Rc<S>,
    latency: Latency,
    rng: RefCell<SplitMix64>,
    trace: RefCell<Option<Vec<String>>>,
}

impl<S: ObjectStore + ?Sized> SimStore<S> {
    pub fn new(inner: Rc<S>, latency: Latency, seed: u64) -> Self {
        SimStore { inner, latency, rng: RefCell::new(SplitMix64(seed)), trace: RefCell::new(None) }
    }

    /// Starts recording calls (replacing any earlier record).
    pub fn start_trace(&self) {
        *self.trace.borrow_mut() = Some(Vec::new());
    }

    /// Stops recording and returns the calls made since `start_trace`.
    pub fn take_trace(&self) -> Vec<String> {
        self.trace.borrow_mut().take().unwrap_or_default()
    }

    fn record(&self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.borrow_mut().as_mut() {
            t.push(line());
        }
    }

    async fn wait(&self, base: Duration) {
        if base.is_zero() {
            return;
        }
        let factor = 1.0 + self.latency.jitter * (2.0 * self.rng.borrow_mut().next_f64() - 1.0);
        tokio::time::sleep(base.mul_f64(factor.max(0.0))).await;
    }
}

#[async_trait(?Send)]
impl<S: ObjectStore + ?Sized> ObjectStore for SimStore<S> {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Object>, StoreError> {
        self.wait(self.latency.read).await;
        let r = self.inner.get(key, range).await;
        self.record(|| {
            let got = match &r {
                Ok(Some(o)) => format!("{} B", o.body.len()),
                Ok(None) => "absent".into(),
                Err(e) => format!("error {e}"),
            };
            match range {
                Some(r) => format!("GET {key} [{}+{}] -> {got}", r.offset, r.length),
                None => format!("GET {key} -> {got}"),
            }
        });
        r
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.wait(self.latency.read).await;
        self.record(|| format!("HEAD {key}"));
        self.inner.head(key).await
    }
    async fn put(&self, key: &str, body: &[u8], condition: PutCondition) -> Result<PutOutcome, StoreError> {
        self.wait(self.latency.write).await;
        self.record(|| format!("PUT {key} ({} B, {condition:?})", body.len()));
        self.inner.put(key, body, condition).await
    }
    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage, StoreError> {
        self.wait(self.latency.read).await;
        self.record(|| format!("LIST {prefix} after {start_after:?}"));
        self.inner.list(prefix, start_after, limit).await
    }
    async fn list_folders(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<FolderPage, StoreError> {
        self.wait(self.latency.read).await;
        self.record(|| format!("LIST {prefix}*/ after {start_after:?}"));
        self.inner.list_folders(prefix, start_after, limit).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.wait(self.latency.write).await;
        self.record(|| format!("DELETE {key}"));
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.wait(self.latency.write).await;
        self.record(|| format!("DELETE {} keys", keys.len()));
        self.inner.delete_many(keys).await
    }
}

/// Latency percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(samples: &[Duration]) -> Percentiles {
        assert!(!samples.is_empty(), "no samples");
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        // Nearest-rank percentile.
        let at = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Percentiles { count: ms.len(), p50: at(0.50), p99: at(0.99), p999: at(0.999), mean: ms.iter().sum::<f64>() / ms.len() as f64 }
    }
}

/// Whether this is the smoke run of `make test` (tiny sizes, only checks that the harness works).
pub fn smoke() -> bool {
    std::env::var("TWILL_BENCH_SMOKE").is_ok_and(|v| v == "1")
}

/// Picks the full-run or the smoke-run figure.
pub fn scale<T>(full: T, smoke_value: T) -> T {
    if smoke() {
        smoke_value
    } else {
        full
    }
}

/// Records a target figure for RESULTS.md: a JSON line appended to `$TWILL_BENCH_TARGETS`
/// (and echoed to stderr).
/// One point of a chart `make bench` draws next to RESULTS.md (see benches/report.mjs):
/// appended as a JSON line to `$TWILL_BENCH_CHARTS`.
pub fn write_chart_point(chart: &str, series: &str, x: f64, y: f64) {
    if let Ok(path) = std::env::var("TWILL_BENCH_CHARTS") {
        use std::io::Write;
        let line = serde_json::json!({ "chart": chart, "series": series, "x": x, "y": y }).to_string();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open the charts file");
        writeln!(f, "{line}").expect("write the charts file");
    }
}

pub fn write_target(target: &str, value: String, met: bool) {
    let line = serde_json::json!({ "target": target, "value": value, "met": met }).to_string();
    eprintln!("target: {line}");
    if let Ok(path) = std::env::var("TWILL_BENCH_TARGETS") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open the targets file");
        writeln!(f, "{line}").expect("write the targets file");
    }
}
