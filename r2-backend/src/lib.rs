//! engine-core's [`ObjectStore`] over the Worker's R2 binding. The only code in the
//! Worker that talks to R2.
//!
//! For local runs only, it can make R2 behave worse than miniflare's does: a fixed latency
//! on every call (`TWILL_EMULATE_R2_LATENCY_MS`), and a seeded schedule of faults
//! (`TWILL_EMULATE_R2_FAULTS`): calls that fail before they reach R2, calls that fail after
//! the operation applied (the ambiguous outcome), and slow calls.

use std::cell::RefCell;

use async_trait::async_trait;
use engine_core::mem_store::SplitMix64;
use engine_core::store::{
    after_folder, ByteRange, FolderPage, ListPage, Object, ObjectMeta, ObjectStore, PutCondition, PutOutcome, StoreError, MAX_LIST_LIMIT,
};
use serde::Deserialize;
use worker::js_sys;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures;
use worker::{Bucket, Conditional, Range};

/// A seeded fault schedule for local runs (`TWILL_EMULATE_R2_FAULTS`, JSON), e.g.
/// `{"seed": 7, "error_before": 0.05, "error_after": 0.05, "slow": 0.1, "slow_ms": 200}`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    pub seed: u64,
    /// Probability that a call fails before it reaches R2.
    #[serde(default)]
    pub error_before: f64,
    /// Probability that a call fails after R2 applied it.
    #[serde(default)]
    pub error_after: f64,
    /// Probability that a call is delayed by `slow_ms` first.
    #[serde(default)]
    pub slow: f64,
    #[serde(default)]
    pub slow_ms: u64,
}

impl FaultPlan {
    /// Parses the setting; a malformed one is an error (a test that meant to inject faults
    /// must not silently run without them).
    pub fn parse(text: &str) -> Result<Self, String> {
        let plan: FaultPlan = serde_json::from_str(text).map_err(|e| format!("TWILL_EMULATE_R2_FAULTS: {e}"))?;
        let p = [plan.error_before, plan.error_after, plan.slow];
        if p.iter().any(|x| !(0.0..=1.0).contains(x)) || plan.slow_ms > 10_000 {
            return Err("TWILL_EMULATE_R2_FAULTS: probabilities are 0..=1 and slow_ms at most 10000".into());
        }
        Ok(plan)
    }
}

/// What happens to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Before,
    After,
}

pub struct R2Store {
    bucket: Bucket,
    emulated_latency_ms: u64,
    faults: Option<(FaultPlan, RefCell<SplitMix64>)>,
}

impl R2Store {
    pub fn new(bucket: Bucket) -> Self {
        R2Store { bucket, emulated_latency_ms: 0, faults: None }
    }

    /// Waits `ms` before every call: local runs (miniflare's R2 answers in about a
    /// millisecond) can then behave like production, where each call is a round trip.
    pub fn with_emulated_latency(mut self, ms: u64) -> Self {
        self.emulated_latency_ms = ms;
        self
    }

    /// Injects faults by `plan` (local runs only).
    pub fn with_faults(mut self, plan: Option<FaultPlan>) -> Self {
        self.faults = plan.map(|p| (p, RefCell::new(SplitMix64(p.seed))));
        self
    }

    /// Waits as the settings say and decides this call's fault.
    async fn before_call(&self) -> Fault {
        if self.emulated_latency_ms > 0 {
            worker::Delay::from(std::time::Duration::from_millis(self.emulated_latency_ms)).await;
        }
        let Some((plan, rng)) = &self.faults else { return Fault::None };
        let (slow, roll) = {
            let mut rng = rng.borrow_mut();
            (rng.next_f64() < plan.slow, rng.next_f64())
        };
        if slow && plan.slow_ms > 0 {
            worker::Delay::from(std::time::Duration::from_millis(plan.slow_ms)).await;
        }
        if roll < plan.error_before {
            Fault::Before
        } else if roll < plan.error_before + plan.error_after {
            Fault::After
        } else {
            Fault::None
        }
    }

    /// Runs one call under this call's fault.
    async fn call<T, F: std::future::Future<Output = Result<T, StoreError>>>(
        &self,
        op: &'static str,
        key: &str,
        run: F,
    ) -> Result<T, StoreError> {
        let injected = |when: &str| StoreError::failed(op, key, format!("injected fault ({when})"));
        match self.before_call().await {
            Fault::Before => Err(injected("before the call reached R2")),
            Fault::After => {
                run.await?;
                Err(injected("after R2 applied the call"))
            }
            Fault::None => run.await,
        }
    }
}

fn store_error(op: &'static str, key: &str, e: worker::Error) -> StoreError {
    StoreError::failed(op, key, e.to_string())
}

fn js_error(op: &'static str, key: &str, e: JsValue) -> StoreError {
    store_error(op, key, worker::Error::from(e))
}

fn meta_of(o: &worker::Object) -> ObjectMeta {
    ObjectMeta { key: o.key(), size: o.size(), etag: o.etag() }
}

#[async_trait(?Send)]
impl ObjectStore for R2Store {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Object>, StoreError> {
        self.call("get", key, async {
            let mut req = self.bucket.get(key);
            if let Some(r) = range {
                req = req.range(Range::OffsetWithLength { offset: r.offset, length: r.length });
            }
            let Some(obj) = req.execute().await.map_err(|e| store_error("get", key, e))? else {
                return Ok(None);
            };
            let meta = meta_of(&obj);
            let body = match obj.body() {
                Some(b) => b.bytes().await.map_err(|e| store_error("get", key, e))?,
                None => Vec::new(),
            };
            Ok(Some(Object { meta, body }))
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.call("head", key, async {
            Ok(self.bucket.head(key).await.map_err(|e| store_error("head", key, e))?.as_ref().map(meta_of))
        })
        .await
    }

    async fn put(&self, key: &str, body: &[u8], condition: PutCondition) -> Result<PutOutcome, StoreError> {
        self.call("put", key, async {
            // Straight from the caller's bytes into a JS array: workers-rs's `put` takes a
            // `Vec`, which would cost a copy of every body (a commit record or a chunk,
            // megabytes) inside the isolate's wasm memory first, and a commit PUTs its
            // record again after an ambiguous failure.
            let bucket: &worker::worker_sys::R2Bucket = self.bucket.as_ref().unchecked_ref();
            let only_if = match condition {
                PutCondition::Unconditional => None,
                PutCondition::CreateOnly => Some(Conditional { etag_does_not_match: Some("*".into()), ..Default::default() }),
                PutCondition::EtagMatches(etag) => Some(Conditional { etag_matches: Some(etag), ..Default::default() }),
            };
            let options = js_sys::Object::new();
            if let Some(only_if) = only_if {
                js_sys::Reflect::set(&options, &"onlyIf".into(), &js_sys::Object::from(only_if))
                    .map_err(|e| js_error("put", key, e))?;
            }
            let promise = bucket
                .put(key.to_string(), js_sys::Uint8Array::from(body).into(), options.into())
                .map_err(|e| js_error("put", key, e))?;
            let stored = wasm_bindgen_futures::JsFuture::from(promise).await.map_err(|e| js_error("put", key, e))?;
            // R2 answers null when the condition fails.
            if stored.is_null() || stored.is_undefined() {
                return Ok(PutOutcome::PreconditionFailed);
            }
            let obj: worker::worker_sys::R2Object = stored.unchecked_into();
            let meta = (|| Ok::<_, JsValue>(ObjectMeta { key: obj.key()?, size: obj.size()? as u64, etag: obj.etag()? }))()
                .map_err(|e| js_error("put", key, e))?;
            Ok(PutOutcome::Stored(meta))
        })
        .await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage, StoreError> {
        self.call("list", prefix, async {
            let mut req = self.bucket.list().prefix(prefix).limit(limit.clamp(1, MAX_LIST_LIMIT) as u32);
            if let Some(after) = start_after {
                req = req.start_after(after);
            }
            let listed = req.execute().await.map_err(|e| store_error("list", prefix, e))?;
            let objects: Vec<ObjectMeta> = listed.objects().iter().map(meta_of).collect();
            let next_start_after = if listed.truncated() { objects.last().map(|m| m.key.clone()) } else { None };
            Ok(ListPage { objects, next_start_after })
        })
        .await
    }

    async fn list_folders(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<FolderPage, StoreError> {
        self.call("list", prefix, async {
            let limit = limit.clamp(1, MAX_LIST_LIMIT) as u32;
            let mut cursor: Option<String> = None;
            // R2 may end a page early (truncated, with a cursor) before it found a folder:
            // go on until one is found or the listing ends.
            loop {
                let mut req = self.bucket.list().prefix(prefix).delimiter("/").limit(limit);
                req = match (&cursor, start_after) {
                    (Some(c), _) => req.cursor(c.clone()),
                    (None, Some(after)) => req.start_after(after),
                    (None, None) => req,
                };
                let listed = req.execute().await.map_err(|e| store_error("list", prefix, e))?;
                let mut folders = listed.delimited_prefixes();
                folders.sort();
                if folders.is_empty() && listed.truncated() && listed.cursor().is_some() {
                    cursor = listed.cursor();
                    continue;
                }
                let next_start_after = if listed.truncated() { folders.last().map(|f| after_folder(f)) } else { None };
                return Ok(FolderPage { folders, next_start_after });
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.call("delete", key, async { self.bucket.delete(key).await.map_err(|e| store_error("delete", key, e)) }).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        let first = keys.first().map_or("", |k| k.as_str());
        self.call("delete", first, async {
            for batch in keys.chunks(MAX_LIST_LIMIT) {
                let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
                self.bucket.delete_multiple(batch).await.map_err(|e| store_error("delete", first, e))?;
            }
            Ok(())
        })
        .await
    }
}
