//! engine-core's [`ObjectStore`] over the Worker's R2 binding. The only code in the
//! Worker that talks to R2.

use async_trait::async_trait;
use engine_core::store::{
    ByteRange, ListPage, Object, ObjectMeta, ObjectStore, PutCondition, PutOutcome, StoreError, MAX_LIST_LIMIT,
};
use worker::{Bucket, Conditional, Range};

pub struct R2Store {
    bucket: Bucket,
    emulated_latency_ms: u64,
}

impl R2Store {
    pub fn new(bucket: Bucket) -> Self {
        R2Store { bucket, emulated_latency_ms: 0 }
    }

    /// Waits `ms` before every call: local runs (miniflare's R2 answers in about a
    /// millisecond) can then behave like production, where each call is a round trip.
    pub fn with_emulated_latency(mut self, ms: u64) -> Self {
        self.emulated_latency_ms = ms;
        self
    }

    async fn emulate_latency(&self) {
        if self.emulated_latency_ms > 0 {
            worker::Delay::from(std::time::Duration::from_millis(self.emulated_latency_ms)).await;
        }
    }
}

fn store_error(op: &'static str, key: &str, e: worker::Error) -> StoreError {
    StoreError { op, key: key.to_string(), message: e.to_string() }
}

fn meta_of(o: &worker::Object) -> ObjectMeta {
    ObjectMeta { key: o.key(), size: o.size(), etag: o.etag() }
}

#[async_trait(?Send)]
impl ObjectStore for R2Store {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Object>, StoreError> {
        self.emulate_latency().await;
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
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.emulate_latency().await;
        Ok(self.bucket.head(key).await.map_err(|e| store_error("head", key, e))?.as_ref().map(meta_of))
    }

    async fn put(&self, key: &str, body: Vec<u8>, condition: PutCondition) -> Result<PutOutcome, StoreError> {
        self.emulate_latency().await;
        let mut req = self.bucket.put(key, body);
        match condition {
            PutCondition::Unconditional => {}
            PutCondition::CreateOnly => {
                req = req.only_if(Conditional { etag_does_not_match: Some("*".into()), ..Default::default() })
            }
            PutCondition::EtagMatches(etag) => {
                req = req.only_if(Conditional { etag_matches: Some(etag), ..Default::default() })
            }
        }
        // workers-rs >= 0.8 answers Ok(None) when the condition fails (R2 returns null).
        match req.execute().await.map_err(|e| store_error("put", key, e))? {
            Some(obj) => Ok(PutOutcome::Stored(meta_of(&obj))),
            None => Ok(PutOutcome::PreconditionFailed),
        }
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage, StoreError> {
        self.emulate_latency().await;
        let mut req = self.bucket.list().prefix(prefix).limit(limit.clamp(1, MAX_LIST_LIMIT) as u32);
        if let Some(after) = start_after {
            req = req.start_after(after);
        }
        let listed = req.execute().await.map_err(|e| store_error("list", prefix, e))?;
        let objects: Vec<ObjectMeta> = listed.objects().iter().map(meta_of).collect();
        let next_start_after = if listed.truncated() { objects.last().map(|m| m.key.clone()) } else { None };
        Ok(ListPage { objects, next_start_after })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.emulate_latency().await;
        self.bucket.delete(key).await.map_err(|e| store_error("delete", key, e))
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.emulate_latency().await;
        for batch in keys.chunks(MAX_LIST_LIMIT) {
            let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
            self.bucket
                .delete_multiple(batch)
                .await
                .map_err(|e| store_error("delete", keys.first().map_or("", |k| k.as_str()), e))?;
        }
        Ok(())
    }
}
