//! In-memory [`ObjectStore`] with R2's semantics (content-hash etags, atomic conditional
//! puts, strong consistency, sorted listing) and seeded fault injection, for native tests
//! and the crash-gate simulation. Never a stand-in for R2 in end-to-end tests.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::store::{
    content_etag, ByteRange, FolderPage, ListPage, Object, ObjectMeta, ObjectStore, PutCondition, PutOutcome, StoreError,
    MAX_LIST_LIMIT,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Get,
    Head,
    Put,
    List,
    Delete,
}

/// What happens to one store operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The call fails and nothing is applied.
    ErrorBefore,
    /// The operation is applied, then the call fails (the ambiguous outcome).
    ErrorAfter,
    /// The engine process dies before this operation is applied: this and every later
    /// call fails until [`MemStore::restart`].
    CrashBefore,
    /// The engine process dies right after this operation is applied.
    CrashAfter,
    /// The operation is slow: it yields to other tasks this many times before applying,
    /// so concurrent replicas interleave differently.
    Delay(u32),
}

/// Decides the fault for each operation. Deterministic given its seed.
pub trait FaultInjector {
    fn decide(&mut self, op: OpKind, key: &str) -> Fault;
}

/// A seeded injector: each operation independently fails with the given probabilities.
pub struct SeededFaults {
    rng: SplitMix64,
    pub error_before: f64,
    pub error_after: f64,
    pub crash: f64,
    /// Probability that an operation is delayed (by 1 to 8 yields).
    pub delay: f64,
}

impl SeededFaults {
    pub fn new(seed: u64, error_before: f64, error_after: f64, crash: f64) -> Self {
        SeededFaults { rng: SplitMix64(seed), error_before, error_after, crash, delay: 0.0 }
    }

    pub fn with_delay(mut self, probability: f64) -> Self {
        self.delay = probability;
        self
    }
}

impl FaultInjector for SeededFaults {
    fn decide(&mut self, _op: OpKind, _key: &str) -> Fault {
        let roll = self.rng.next_f64();
        let mut edge = self.crash / 2.0;
        if roll < edge {
            return Fault::CrashBefore;
        }
        edge += self.crash / 2.0;
        if roll < edge {
            return Fault::CrashAfter;
        }
        edge += self.error_before;
        if roll < edge {
            return Fault::ErrorBefore;
        }
        edge += self.error_after;
        if roll < edge {
            return Fault::ErrorAfter;
        }
        edge += self.delay;
        if roll < edge {
            return Fault::Delay(1 + self.rng.below(8) as u32);
        }
        Fault::None
    }
}

/// Small, fast, seedable PRNG (SplitMix64): enough for fault schedules and workloads.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Operation counts, for tests that check how many R2 calls a path makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStoreCounts {
    pub gets: u64,
    pub heads: u64,
    pub puts: u64,
    pub lists: u64,
    pub deletes: u64,
}

#[derive(Default)]
pub struct MemStore {
    objects: RefCell<BTreeMap<String, Stored>>,
    injector: RefCell<Option<Box<dyn FaultInjector>>>,
    crashed: Cell<bool>,
    counts: Cell<MemStoreCounts>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_faults(&self, injector: Option<Box<dyn FaultInjector>>) {
        *self.injector.borrow_mut() = injector;
    }

    /// True once a crash fault fired: the engine that used this store is dead.
    pub fn crashed(&self) -> bool {
        self.crashed.get()
    }

    /// Bring the store back after a simulated crash (the objects are what R2 kept).
    pub fn restart(&self) {
        self.crashed.set(false);
    }

    pub fn counts(&self) -> MemStoreCounts {
        self.counts.get()
    }

    pub fn keys(&self) -> Vec<String> {
        self.objects.borrow().keys().cloned().collect()
    }

    pub fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        self.objects.borrow().get(key).map(|o| o.body.clone())
    }

    pub fn raw_put(&self, key: &str, body: Vec<u8>) {
        self.objects.borrow_mut().insert(key.to_string(), Stored::new(body));
    }



    fn count(&self, op: OpKind) {
        let mut c = self.counts.get();
        match op {
            OpKind::Get => c.gets += 1,
            OpKind::Head => c.heads += 1,
            OpKind::Put => c.puts += 1,
            OpKind::List => c.lists += 1,
            OpKind::Delete => c.deletes += 1,
        }
        self.counts.set(c);
    }

    /// Runs one operation under the fault schedule.
    async fn run<T>(
        &self,
        op: OpKind,
        op_name: &'static str,
        key: &str,
        apply: impl FnOnce() -> T,
    ) -> Result<T, StoreError> {
        let err = |message: &str| StoreError::failed(op_name, key, message);
        if self.crashed.get() {
            return Err(err("engine crashed (simulated)"));
        }
        self.count(op);
        let fault = match self.injector.borrow_mut().as_mut() {
            Some(injector) => injector.decide(op, key),
            None => Fault::None,
        };
        match fault {
            Fault::None => Ok(apply()),
            Fault::Delay(yields) => {
                YieldNow(yields).await;
                if self.crashed.get() {
                    return Err(err("engine crashed (simulated) while the operation was in flight"));
                }
                Ok(apply())
            }
            Fault::ErrorBefore => Err(err("injected failure before the operation applied")),
            Fault::ErrorAfter => {
                apply();
                Err(err("injected failure after the operation applied"))
            }
            Fault::CrashBefore => {
                self.crashed.set(true);
                Err(err("engine crashed (simulated) before the operation applied"))
            }
            Fault::CrashAfter => {
                apply();
                self.crashed.set(true);
                Err(err("engine crashed (simulated) after the operation applied"))
            }
        }
    }
}

/// Returns `Pending` this many times (waking itself), letting other tasks run.
struct YieldNow(u32);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 == 0 {
            return std::task::Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// An object and its etag, computed once when it is stored (as R2 does).
struct Stored {
    body: Vec<u8>,
    etag: String,
}

impl Stored {
    fn new(body: Vec<u8>) -> Self {
        let etag = content_etag(&body);
        Stored { body, etag }
    }

    fn meta(&self, key: &str) -> ObjectMeta {
        ObjectMeta { key: key.to_string(), size: self.body.len() as u64, etag: self.etag.clone() }
    }
}

/// The objects under `prefix` strictly after `start_after`, in key order.
fn under<'a>(
    objects: &'a BTreeMap<String, Stored>,
    prefix: &'a str,
    start_after: Option<&str>,
) -> impl Iterator<Item = (&'a String, &'a Stored)> + 'a {
    let lower = match start_after {
        Some(after) => std::ops::Bound::Excluded(after.to_string()),
        None => std::ops::Bound::Included(prefix.to_string()),
    };
    // Keys under the prefix sort at or after it, and together.
    objects
        .range((lower, std::ops::Bound::Unbounded))
        .skip_while(move |(key, _)| key.as_str() < prefix)
        .take_while(move |(key, _)| key.starts_with(prefix))
}

#[async_trait(?Send)]
impl ObjectStore for MemStore {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Object>, StoreError> {
        self.run(OpKind::Get, "get", key, || {
            let objects = self.objects.borrow();
            let stored = objects.get(key)?;
            let body = &stored.body;
            let slice = match range {
                None => body.clone(),
                Some(r) => {
                    let start = (r.offset as usize).min(body.len());
                    let end = start.saturating_add(r.length as usize).min(body.len());
                    body[start..end].to_vec()
                }
            };
            Some(Object { meta: stored.meta(key), body: slice })
        }).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.run(OpKind::Head, "head", key, || self.objects.borrow().get(key).map(|o| o.meta(key))).await
    }

    async fn put(&self, key: &str, body: &[u8], condition: PutCondition) -> Result<PutOutcome, StoreError> {
        self.run(OpKind::Put, "put", key, || {
            let mut objects = self.objects.borrow_mut();
            let allowed = match (&condition, objects.get(key)) {
                (PutCondition::Unconditional, _) => true,
                (PutCondition::CreateOnly, existing) => existing.is_none(),
                (PutCondition::EtagMatches(etag), Some(existing)) => &existing.etag == etag,
                (PutCondition::EtagMatches(_), None) => false,
            };
            if !allowed {
                return PutOutcome::PreconditionFailed;
            }
            let stored = Stored::new(body.to_vec());
            let m = stored.meta(key);
            objects.insert(key.to_string(), stored);
            PutOutcome::Stored(m)
        }).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage, StoreError> {
        self.run(OpKind::List, "list", prefix, || {
            let limit = limit.clamp(1, MAX_LIST_LIMIT);
            let objects = self.objects.borrow();
            let mut page = ListPage::default();
            for (key, stored) in under(&objects, prefix, start_after) {
                if page.objects.len() == limit {
                    page.next_start_after = page.objects.last().map(|m| m.key.clone());
                    break;
                }
                page.objects.push(stored.meta(key));
            }
            page
        }).await
    }

    async fn list_folders(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<FolderPage, StoreError> {
        self.run(OpKind::List, "list", prefix, || {
            let limit = limit.clamp(1, MAX_LIST_LIMIT);
            let objects = self.objects.borrow();
            let mut page = FolderPage::default();
            for (key, _) in under(&objects, prefix, start_after) {
                let Some(slash) = key[prefix.len()..].find('/') else { continue };
                let folder = &key[..prefix.len() + slash + 1];
                if page.folders.last().is_some_and(|f| f == folder) {
                    continue;
                }
                if page.folders.len() == limit {
                    page.next_start_after = page.folders.last().map(|f| crate::store::after_folder(f));
                    break;
                }
                page.folders.push(folder.to_string());
            }
            page
        }).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run(OpKind::Delete, "delete", key, || {
            self.objects.borrow_mut().remove(key);
        }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn conditional_puts_behave_like_r2() {
        block_on(async {
            let s = MemStore::new();
            let first = s.put("k", b"a", PutCondition::CreateOnly).await.unwrap();
            let PutOutcome::Stored(m) = first else { panic!("create-only on absent key must store") };
            assert_eq!(m.etag, content_etag(b"a"));
            assert_eq!(s.put("k", b"b", PutCondition::CreateOnly).await.unwrap(), PutOutcome::PreconditionFailed);
            assert_eq!(
                s.put("k", b"c", PutCondition::EtagMatches("nope".into())).await.unwrap(),
                PutOutcome::PreconditionFailed
            );
            assert!(matches!(
                s.put("k", b"c", PutCondition::EtagMatches(m.etag.clone())).await.unwrap(),
                PutOutcome::Stored(_)
            ));
            assert_eq!(s.raw_get("k").unwrap(), b"c");
            let part = s.get("k", Some(ByteRange { offset: 0, length: 10 })).await.unwrap().unwrap();
            assert_eq!(part.body, b"c");
        });
    }

    #[test]
    fn list_is_sorted_prefixed_and_paged() {
        block_on(async {
            let s = MemStore::new();
            for k in ["a/3", "a/1", "b/1", "a/2", "a0"] {
                s.raw_put(k, vec![1]);
            }
            let p = s.list("a/", None, 2).await.unwrap();
            let keys: Vec<_> = p.objects.iter().map(|m| m.key.as_str()).collect();
            assert_eq!(keys, ["a/1", "a/2"]);
            let p2 = s.list("a/", p.next_start_after.as_deref(), 2).await.unwrap();
            let keys: Vec<_> = p2.objects.iter().map(|m| m.key.as_str()).collect();
            assert_eq!(keys, ["a/3"]);
            assert!(p2.next_start_after.is_none());
        });
    }

    #[test]
    fn error_after_applies_and_crash_sticks() {
        struct Script(Vec<Fault>);
        impl FaultInjector for Script {
            fn decide(&mut self, _: OpKind, _: &str) -> Fault {
                if self.0.is_empty() { Fault::None } else { self.0.remove(0) }
            }
        }
        block_on(async {
            let s = MemStore::new();
            s.set_faults(Some(Box::new(Script(vec![Fault::ErrorAfter, Fault::ErrorBefore, Fault::CrashAfter]))));
            assert!(s.put("x", &[1], PutCondition::CreateOnly).await.is_err());
            assert_eq!(s.raw_get("x"), Some(vec![1]));
            assert!(s.put("y", &[1], PutCondition::CreateOnly).await.is_err());
            assert_eq!(s.raw_get("y"), None);
            assert!(s.put("z", &[1], PutCondition::CreateOnly).await.is_err());
            assert_eq!(s.raw_get("z"), Some(vec![1]));
            assert!(s.crashed());
            assert!(s.head("x").await.is_err());
            s.restart();
            assert!(s.head("x").await.unwrap().is_some());
        });
    }
}

/// An injector from a closure, for scripted scenarios.
pub struct ScriptedFaults<F: FnMut(OpKind, &str) -> Fault>(pub F);

impl<F: FnMut(OpKind, &str) -> Fault> FaultInjector for ScriptedFaults<F> {
    fn decide(&mut self, op: OpKind, key: &str) -> Fault {
        (self.0)(op, key)
    }
}
