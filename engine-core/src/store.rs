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

/// A failed store call. The operation may or may not have been applied (R2 can fail after
/// a write landed), so callers on the commit path must resolve the outcome by reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object store error during {op} {key}: {message}")]
pub struct StoreError {
    pub op: &'static str,
    pub key: String,
    pub message: String,
}

/// The most keys one `list` call returns (R2's own limit).
pub const MAX_LIST_LIMIT: usize = 1000;

#[async_trait(?Send)]
pub trait ObjectStore {
    /// The object at `key`, or a range of it; `None` if absent.
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Option<Object>, StoreError>;
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;
    async fn put(&self, key: &str, body: Vec<u8>, condition: PutCondition) -> Result<PutOutcome, StoreError>;
    /// Keys under `prefix` strictly after `start_after`, at most `limit` (≤ [`MAX_LIST_LIMIT`]).
    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<ListPage, StoreError>;
    /// Deleting an absent key succeeds.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// The etag R2 gives an object written in one part: the hex MD5 of its bytes.
pub fn content_etag(body: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(body))
}
