//! The one narrow interface to durable storage. R2 implements it in the Worker
//! (`r2-backend`), [`crate::mem_store::MemStore`] implements it natively for tests and
//! simulation. Nothing else in the system touches storage.

use async_trait::async_trait;

/// What the store knows about one object. `etag` is a content hash (as in R2), so two
/// objects with identical bytes have identical etags: anything compared by etag must
/// carry its own generation counter to avoid ABA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

#[derive(Debug, Clone)]
pub struct Object {
    pub meta: ObjectMeta,
    pub body: Vec<u8>,
}

/// A byte range `[offset, offset + length)` of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub length: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Overwrite whatever is there. Only for keys that are never contended.
    Unconditional,
    /// Succeed only if no object exists at the key (R2 `etagDoesNotMatch: "*"`).
    CreateOnly,
    /// Succeed only if the current object has this etag (R2 `etagMatches`).
    EtagMatches(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    Stored(ObjectMeta),
    /// The condition did not hold; nothing was written.
    PreconditionFailed,
}

#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Keys in ascending byte order.
    pub objects: Vec<ObjectMeta>,
    /// Set when more keys follow: pass it as `start_after` to continue.
    pub next_start_after: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FolderPage {
    /// Folder prefixes (each ends with '/') in ascending byte order.
    pub folders: Vec<String>,
    /// Set when more folders follow: pass it as `start_after` to continue.
    pub next_start_after: Option<String>,
}

/// The first key after every key under `folder` (which ends with '/'): listing on from it
/// skips the folder's keys.
pub fn after_folder(folder: &str) -> String {
    let mut next = folder.strip_suffix('/').unwrap_or(folder).to_string();
    next.push('0'); // the byte after '/'
    next
}

/// A failed store call. The operation may or may not have been applied (R2 can fail after
/// a write landed), so callers on the commit path must resolve the outcome by reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object store error during {op} {key}: {message}")]
pub struct StoreError {
    pub op: &'static str,
    pub key: String,
    pub message: String,
    pub kind: StoreErrorKind,
}

/// Why a store call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The store failed (the call may or may not have been applied).
    Failed,
    /// The operation used up its budget of store calls ([`CountingStore::budget_calls`]):
    /// the call was never made.
    OutOfCalls,
}

impl StoreError {
    /// A failed call (the usual kind).
    pub fn failed(op: &'static str, key: &str, message: impl Into<String>) -> Self {
        StoreError { op, key: key.to_string(), message: message.into(), kind: StoreErrorKind::Failed }
    }
}

/// The most keys one `list` call returns (R2's own limit).
pub const MAX_LIST_LIMIT: usize = 1000;

#[async_trait(?Send)]
pub trait ObjectStore {
    /// The object at `key`, or a range of it; `None` if absent.
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Object>, StoreError>;
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;
    async fn put(&self, key: &str, body: &[u8], condition: PutCondition) -> Result<PutOutcome, StoreError>;
    /// Keys under `prefix` strictly after `start_after`, at most `limit` (≤ [`MAX_LIST_LIMIT`]).
    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage, StoreError>;
    /// The folders under `prefix` (each distinct `prefix…/` a key continues with, as R2's
    /// `delimiter: "/"` gives them) strictly after `start_after`, at most `limit`.
    async fn list_folders(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<FolderPage, StoreError>;
    /// Deleting an absent key succeeds.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Deletes several keys (R2 takes up to 1,000 in one call).
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for k in keys {
            self.delete(k).await?;
        }
        Ok(())
    }
}

/// The etag R2 gives an object written in one part: the hex MD5 of its bytes.
pub fn content_etag(body: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(body))
}

/// Operation and byte counts of a store, as seen through [`CountingStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// GET, HEAD and LIST calls (R2 class B, except LIST which is class A).
    pub reads: u64,
    /// PUT and DELETE calls.
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl StoreCounts {
    pub fn since(&self, earlier: &StoreCounts) -> StoreCounts {
        StoreCounts {
            reads: self.reads - earlier.reads,
            writes: self.writes - earlier.writes,
            bytes_read: self.bytes_read - earlier.bytes_read,
            bytes_written: self.bytes_written - earlier.bytes_written,
        }
    }
}

/// Wraps a store and counts what goes through it (one per database, so a request's
/// deltas are exact while it holds the database).
pub struct CountingStore<S: ?Sized> {
    inner: std::rc::Rc<S>,
    counts: std::cell::Cell<StoreCounts>,
    /// Calls the operation in progress may still make (`None`: no bound).
    calls_left: std::cell::Cell<Option<u64>>,
}

impl<S: ObjectStore + ?Sized> CountingStore<S> {
    pub fn new(inner: std::rc::Rc<S>) -> Self {
        CountingStore { inner, counts: Default::default(), calls_left: Default::default() }
    }

    /// Bounds the calls made from now on (`None`: unbounded), e.g. by the platform's
    /// subrequest limit for the operation about to run. A call past the bound fails with
    /// [`StoreErrorKind::OutOfCalls`] without being made.
    pub fn budget_calls(&self, calls: Option<u64>) {
        self.calls_left.set(calls);
    }

    fn spend(&self, op: &'static str, key: &str, calls: u64) -> Result<(), StoreError> {
        match self.calls_left.get() {
            Some(left) if left < calls => Err(StoreError {
                op,
                key: key.to_string(),
                message: "the operation used up its budget of R2 calls".into(),
                kind: StoreErrorKind::OutOfCalls,
            }),
            Some(left) => {
                self.calls_left.set(Some(left - calls));
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub fn counts(&self) -> StoreCounts {
        self.counts.get()
    }

    fn add(&self, f: impl FnOnce(&mut StoreCounts)) {
        let mut c = self.counts.get();
        f(&mut c);
        self.counts.set(c);
    }
}

#[async_trait(?Send)]
impl<S: ObjectStore + ?Sized> ObjectStore for CountingStore<S> {
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Object>, StoreError> {
        self.spend("get", key, 1)?;
        self.add(|c| c.reads += 1);
        let r = self.inner.get(key, range).await;
        if let Ok(Some(o)) = &r {
            let n = o.body.len() as u64;
            self.add(|c| c.bytes_read += n);
        }
        r
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.spend("head", key, 1)?;
        self.add(|c| c.reads += 1);
        self.inner.head(key).await
    }
    async fn put(&self, key: &str, body: &[u8], condition: PutCondition) -> Result<PutOutcome, StoreError> {
        self.spend("put", key, 1)?;
        let n = body.len() as u64;
        self.add(|c| {
            c.writes += 1;
            c.bytes_written += n
        });
        self.inner.put(key, body, condition).await
    }
    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage, StoreError> {
        self.spend("list", prefix, 1)?;
        self.add(|c| c.reads += 1);
        self.inner.list(prefix, start_after, limit).await
    }
    async fn list_folders(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<FolderPage, StoreError> {
        self.spend("list", prefix, 1)?;
        self.add(|c| c.reads += 1);
        self.inner.list_folders(prefix, start_after, limit).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.spend("delete", key, 1)?;
        self.add(|c| c.writes += 1);
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let calls = keys.len().div_ceil(MAX_LIST_LIMIT) as u64;
        self.spend("delete", &keys[0], calls)?;
        self.add(|c| c.writes += calls);
        self.inner.delete_many(keys).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_store::MemStore;

    #[test]
    fn a_budget_of_calls_refuses_the_call_past_it_without_making_it() {
        let inner = std::rc::Rc::new(MemStore::new());
        let store = CountingStore::new(inner.clone());
        store.budget_calls(Some(2));
        futures::executor::block_on(async {
            assert!(store.put("a", &[1], PutCondition::CreateOnly).await.is_ok());
            assert!(store.get("a", None).await.unwrap().is_some());
            let e = store.put("b", &[2], PutCondition::CreateOnly).await.unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::OutOfCalls);
            assert_eq!(crate::EngineError::from(e).code(), "LIMIT_EXCEEDED");
            assert!(inner.raw_get("b").is_none(), "the refused call was never made");
            store.budget_calls(None);
            assert!(store.put("b", &[2], PutCondition::CreateOnly).await.is_ok());
        });
        assert_eq!(store.counts().writes, 2);
    }
}
