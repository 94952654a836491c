//! Upload sessions: importing a file larger than one request body (Workers take 100 MB) in
//! parts, each its own request, resumable after any failure, then published as one commit
//! exactly like a one-request import.
//!
//! Objects: the session's state at `sessions/{id}` (JSON, changed only by etag match), each
//! part's chunks at `upload/{id}/p{part:05}-{attempt}/{chunk:04}` (create-only), and each
//! part's record at `upload/{id}/parts/{part:05}` (create-only, written after its chunks:
//! a part is there once its record is). Sending a part again is harmless: the first record
//! wins, the same bytes answer as already stored, other bytes `UPLOAD_CONFLICT`. Completing
//! moves the session from `open` to `publishing` by etag match, then checks and publishes;
//! the sweep moves sessions older than their lifetime from `open` to `abandoned` the same
//! way before deleting anything, so a session is either published or swept, never both.

use futures::future::join_all;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::EngineError;
use crate::layout::UploadId;
use crate::store::{PutCondition, PutOutcome, MAX_LIST_LIMIT};

use super::import::{invalid, ChunkWriter, FileHeader, FileStart, IMPORT_CHUNK_BYTES};
use super::{Database, Imported};

/// Bytes per part unless the session asks for another size (a multiple of 256 KiB).
pub const UPLOAD_PART_DEFAULT_BYTES: u64 = 64 << 20;
/// The largest part (`UPLOAD_PART_SIZE`): under Workers' 100 MB request body.
pub const UPLOAD_PART_MAX_BYTES: u64 = 96 << 20;
/// The largest file a session may import (`UPLOAD_SIZE`).
pub const UPLOAD_MAX_BYTES: u64 = 16 << 30;
/// How long a session may take from its start to its completion (`UPLOAD_LIFETIME`).
pub const UPLOAD_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;
/// Sessions are swept only this long after their lifetime ended (a completion that began
/// in time has long finished).
const SWEEP_AFTER_MS: u64 = 60 * 60 * 1000;
/// Sessions one sweep looks at, at most (bounds its R2 calls).
const SESSIONS_PER_SWEEP: usize = 8;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Taking parts.
    Open,
    /// Being checked and published (or it was: the record is deleted once it is).
    Publishing,
    /// Past its lifetime; its objects are being deleted.
    Abandoned,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    state: SessionState,
    part_bytes: u64,
    started_ms: u64,
    replace: bool,
    /// The newest commit when the session began: if the database is deleted after it, the
    /// session can no longer publish.
    began_at_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartRecord {
    bytes: u64,
    sha256: String,
    chunks: Vec<String>,
}

/// A session begun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSession {
    pub id: String,
    pub part_bytes: u64,
    pub expires_ms: u64,
}

/// A part stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartStored {
    pub part: u32,
    pub bytes: u64,
    pub sha256: String,
    /// The part had been stored before, with the same bytes.
    pub already_stored: bool,
}

/// What a session holds so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub session: UploadSession,
    pub state: SessionState,
    /// Parts stored, in order, with their sizes.
    pub parts: Vec<(u32, u64)>,
}

impl Database {
    /// Begins an upload session. Without `replace`, a database with tables is refused now
    /// (and again when the session completes).
    pub async fn begin_upload(&mut self, part_bytes: Option<u64>, replace: bool) -> Result<UploadSession, EngineError> {
        let part_bytes = part_bytes.unwrap_or(UPLOAD_PART_DEFAULT_BYTES);
        if part_bytes == 0 || part_bytes % IMPORT_CHUNK_BYTES as u64 != 0 || part_bytes > UPLOAD_PART_MAX_BYTES {
            return Err(EngineError::Limit(format!(
                "part_bytes must be a multiple of {IMPORT_CHUNK_BYTES} up to {UPLOAD_PART_MAX_BYTES} (UPLOAD_PART_SIZE limit), not {part_bytes}"
            )));
        }
        if !replace {
            self.refuse_if_not_empty().await?;
        }
        let started_ms = self.now_ms() as u64;
        let id = UploadId::new(started_ms, self.host.as_ref());
        let record = SessionRecord { state: SessionState::Open, part_bytes, started_ms, replace, began_at_seq: self.applied_seq };
        let body = serde_json::to_vec(&record).map_err(|e| EngineError::Internal(e.to_string()))?;
        match self.store.put(&self.layout.upload_session_key(&id), &body, PutCondition::CreateOnly).await? {
            PutOutcome::Stored(_) => Ok(UploadSession { id: id.0, part_bytes, expires_ms: started_ms + UPLOAD_LIFETIME_MS }),
            PutOutcome::PreconditionFailed => Err(EngineError::Internal(format!("upload id {} was drawn twice", id.0))),
        }
    }

    /// The session's record and etag, if it is open and in time.
    async fn open_session(&self, id: &UploadId) -> Result<(SessionRecord, String), EngineError> {
        let (record, etag) = self.session(id).await?;
        match record.state {
            SessionState::Open => {}
            SessionState::Publishing => {
                return Err(EngineError::UploadConflict(format!("upload {} is being completed", id.0)));
            }
            SessionState::Abandoned => return Err(EngineError::UploadExpired(format!("upload {} was abandoned", id.0))),
        }
        if record.started_ms + UPLOAD_LIFETIME_MS < self.now_ms() as u64 {
            return Err(EngineError::UploadExpired(format!(
                "upload {} began more than {} h ago (UPLOAD_LIFETIME): begin a new one",
                id.0,
                UPLOAD_LIFETIME_MS / 3_600_000
            )));
        }
        Ok((record, etag))
    }

    async fn session(&self, id: &UploadId) -> Result<(SessionRecord, String), EngineError> {
        let key = self.layout.upload_session_key(id);
        let Some(obj) = self.store.get(&key, None).await? else {
            return Err(EngineError::UploadNotFound(format!("no upload {} for this database (finished, aborted or swept)", id.0)));
        };
        let record = serde_json::from_slice(&obj.body).map_err(|e| EngineError::Corrupt(format!("{key}: {e}")))?;
        Ok((record, obj.meta.etag))
    }

    fn part_key(&self, id: &UploadId, part: u32) -> String {
        format!("{}parts/{part:05}", self.layout.upload_prefix(&id.0))
    }

    /// Stores part `part` (0-based) of upload `id`: `part_bytes` bytes, except the last
    /// part, which may be shorter.
    pub async fn upload_part<S>(&mut self, id: &str, part: u32, mut body: S) -> Result<PartStored, EngineError>
    where
        S: Stream<Item = Result<Vec<u8>, EngineError>> + Unpin,
    {
        let id = UploadId::parse(id)?;
        let (session, _) = self.open_session(&id).await?;
        let max_parts = UPLOAD_MAX_BYTES.div_ceil(session.part_bytes);
        if part as u64 >= max_parts {
            return Err(EngineError::Limit(format!(
                "part {part} would end past {UPLOAD_MAX_BYTES} bytes (UPLOAD_SIZE limit; parts count from 0)"
            )));
        }
        let attempt = crate::host::random_hex(self.host.as_ref(), 4);
        let prefix = format!("{}p{part:05}-{attempt}/", self.layout.upload_prefix(&id.0));
        let key_of = |i: usize| format!("{prefix}{i:04}");
        let start = if part == 0 { FileStart::Here } else { FileStart::Elsewhere };
        let mut writer = ChunkWriter::new(start, 0);
        let mut hash = Sha256::new();
        let stored = async {
            while let Some(piece) = body.next().await.transpose()? {
                hash.update(&piece);
                if writer.bytes() + piece.len() as u64 > session.part_bytes {
                    return Err(EngineError::Limit(format!(
                        "a part holds at most the session's part_bytes, {} bytes (UPLOAD_PART_SIZE)",
                        session.part_bytes
                    )));
                }
                writer.push(self, &piece, key_of).await?;
            }
            writer.finish(self, key_of).await
        }
        .await;
        let written = match stored {
            Ok(w) if w.bytes == 0 => Err(invalid("a part needs at least one byte")),
            other => other,
        };
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = self.store.delete_many(&(0..writer.attempted()).map(key_of).collect::<Vec<_>>()).await;
                return Err(e);
            }
        };
        let sha256 = hex::encode(hash.finalize());
        let record = PartRecord { bytes: written.bytes, sha256: sha256.clone(), chunks: written.keys.clone() };
        let body = serde_json::to_vec(&record).map_err(|e| EngineError::Internal(e.to_string()))?;
        let outcome = self.store.put(&self.part_key(&id, part), &body, PutCondition::CreateOnly).await;
        let stored = PartStored { part, bytes: written.bytes, sha256: sha256.clone(), already_stored: false };
        match outcome {
            Ok(PutOutcome::Stored(_)) => Ok(stored),
            Ok(PutOutcome::PreconditionFailed) => {
                // Sent before: the first copy stays, this one goes.
                let _ = self.store.delete_many(&written.keys).await;
                let first = self.part_record(&id, part).await?;
                if first.sha256 != sha256 {
                    return Err(EngineError::UploadConflict(format!(
                        "part {part} of upload {} was stored before with other bytes (sha256 {}): begin a new upload to change it",
                        id.0, first.sha256
                    )));
                }
                Ok(PartStored { already_stored: true, ..stored })
            }
            Err(e) => {
                // The record may have landed: the chunks stay (the sweep takes them if not).
                Err(e.into())
            }
        }
    }

    async fn part_record(&self, id: &UploadId, part: u32) -> Result<PartRecord, EngineError> {
        let key = self.part_key(id, part);
        let obj = self.store.get(&key, None).await?.ok_or_else(|| EngineError::Internal(format!("{key} vanished")))?;
        serde_json::from_slice(&obj.body).map_err(|e| EngineError::Corrupt(format!("{key}: {e}")))
    }

    /// The numbers of the parts stored so far, in order.
    async fn stored_parts(&self, id: &UploadId) -> Result<Vec<u32>, EngineError> {
        let prefix = format!("{}parts/", self.layout.upload_prefix(&id.0));
        let mut parts = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(&prefix, after.as_deref(), MAX_LIST_LIMIT).await?;
            parts.extend(page.objects.iter().filter_map(|m| m.key.strip_prefix(&prefix)?.parse::<u32>().ok()));
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => return Ok(parts),
            }
        }
    }

    /// What upload `id` holds so far (to resume it: send the parts that are missing).
    pub async fn upload_status(&mut self, id: &str) -> Result<UploadStatus, EngineError> {
        let id = UploadId::parse(id)?;
        let (record, _) = self.session(&id).await?;
        let parts = self.part_records(&id).await?;
        Ok(UploadStatus {
            session: UploadSession { id: id.0, part_bytes: record.part_bytes, expires_ms: record.started_ms + UPLOAD_LIFETIME_MS },
            state: record.state,
            parts: parts.iter().map(|(p, r)| (*p, r.bytes)).collect(),
        })
    }

    /// The records of the parts stored so far, in order, read `fetch_concurrency` at a time.
    async fn part_records(&self, id: &UploadId) -> Result<Vec<(u32, PartRecord)>, EngineError> {
        let numbers = self.stored_parts(id).await?;
        let mut parts = Vec::with_capacity(numbers.len());
        for batch in numbers.chunks(self.config.fetch_concurrency.max(1)) {
            let records = join_all(batch.iter().map(|p| self.part_record(id, *p))).await;
            for (p, r) in batch.iter().zip(records) {
                parts.push((*p, r?));
            }
        }
        Ok(parts)
    }

    /// Checks that parts `0..count` are all there (each full but the last) and no other,
    /// and publishes the file they make as one commit. The client says how many parts the
    /// file has: the store cannot tell a file from its beginning. A file that fails its
    /// check ends the session (its upload is deleted); other failures leave it open.
    pub async fn complete_upload(&mut self, id: &str, count: u32) -> Result<Imported, EngineError> {
        let id = UploadId::parse(id)?;
        let (session, etag) = self.open_session(&id).await?;
        let parts = self.part_records(&id).await?;
        if count == 0 {
            return Err(EngineError::UploadConflict("a file has at least one part".into()));
        }
        if let Some((extra, _)) = parts.iter().find(|(p, _)| *p >= count) {
            return Err(EngineError::UploadConflict(format!(
                "upload {} holds part {extra}, past the {count} parts the completion names",
                id.0
            )));
        }
        if let Some(missing) = (0..count).find(|p| parts.get(*p as usize).map(|(n, _)| *n) != Some(*p)) {
            return Err(EngineError::UploadConflict(format!(
                "part {missing} of upload {} is missing (parts count from 0; stored: {:?})",
                id.0,
                parts.iter().map(|(p, _)| p).collect::<Vec<_>>()
            )));
        }
        if let Some((p, record)) = parts[..count as usize - 1].iter().find(|(_, r)| r.bytes != session.part_bytes) {
            return Err(EngineError::UploadConflict(format!(
                "part {p} holds {} bytes; every part but the last must hold part_bytes, {}",
                record.bytes,
                session.part_bytes
            )));
        }
        // From here on the session is this completion's: the sweep cannot take it.
        let publishing = SessionRecord { state: SessionState::Publishing, ..session.clone() };
        let body = serde_json::to_vec(&publishing).map_err(|e| EngineError::Internal(e.to_string()))?;
        let publishing_etag = match self.store.put(&self.layout.upload_session_key(&id), &body, PutCondition::EtagMatches(etag)).await? {
            PutOutcome::Stored(meta) => meta.etag,
            PutOutcome::PreconditionFailed => {
                return Err(EngineError::UploadConflict(format!("upload {} changed meanwhile (completed or swept)", id.0)))
            }
        };
        let bytes: u64 = parts.iter().map(|(_, r)| r.bytes).sum();
        let chunks: Vec<String> = parts.into_iter().flat_map(|(_, r)| r.chunks).collect();
        let header = self
            .store
            .get(&chunks[0], Some(crate::store::ByteRange { offset: 0, length: 100 }))
            .await?
            .ok_or_else(|| EngineError::Internal(format!("{} vanished", chunks[0])))?;
        let published = match FileHeader::check(&header.body) {
            Ok(header) => self.publish_import(chunks.clone(), header, bytes, session.replace, session.began_at_seq).await,
            Err(e) => Err(e),
        };
        let mut done: Vec<String> = (0..count).map(|p| self.part_key(&id, p)).collect();
        done.push(self.layout.upload_session_key(&id));
        match &published {
            // The chunks now belong to the database; the session's bookkeeping goes.
            Ok(_) => {
                let _ = self.store.delete_many(&done).await;
            }
            Err(EngineError::InvalidFile(_)) => {
                done.extend(chunks);
                let _ = self.store.delete_many(&done).await;
            }
            // The import may have committed: its chunks must never be swept.
            Err(EngineError::CommitUnknown(_) | EngineError::Internal(_)) => {}
            Err(_) => {
                // Nothing was committed: the session may be completed again.
                let reopened = serde_json::to_vec(&session).map_err(|e| EngineError::Internal(e.to_string()))?;
                let key = self.layout.upload_session_key(&id);
                let _ = self.store.put(&key, &reopened, PutCondition::EtagMatches(publishing_etag)).await;
            }
        }
        published
    }

    /// Ends upload `id` without importing it and deletes what it stored.
    pub async fn abort_upload(&mut self, id: &str) -> Result<u64, EngineError> {
        let id = UploadId::parse(id)?;
        let (record, etag) = self.session(&id).await?;
        if record.state == SessionState::Publishing {
            return Err(EngineError::UploadConflict(format!("upload {} is being completed", id.0)));
        }
        self.abandon(&id, record, etag).await
    }

    /// Marks the session abandoned (by etag match, so a completion cannot be racing it),
    /// then deletes its objects. Returns how many were deleted.
    async fn abandon(&self, id: &UploadId, record: SessionRecord, etag: String) -> Result<u64, EngineError> {
        let key = self.layout.upload_session_key(id);
        if record.state != SessionState::Abandoned {
            let abandoned = SessionRecord { state: SessionState::Abandoned, ..record };
            let body = serde_json::to_vec(&abandoned).map_err(|e| EngineError::Internal(e.to_string()))?;
            if let PutOutcome::PreconditionFailed = self.store.put(&key, &body, PutCondition::EtagMatches(etag)).await? {
                return Err(EngineError::UploadConflict(format!("upload {} changed meanwhile (completed?)", id.0)));
            }
        }
        let prefix = self.layout.upload_prefix(&id.0);
        let mut deleted = 0;
        loop {
            let page = self.store.list(&prefix, None, MAX_LIST_LIMIT).await?;
            if page.objects.is_empty() {
                break;
            }
            let keys: Vec<String> = page.objects.into_iter().map(|m| m.key).collect();
            deleted += keys.len() as u64;
            self.store.delete_many(&keys).await?;
        }
        self.store.delete(&key).await?;
        Ok(deleted + 1)
    }

    /// Abandons sessions whose lifetime ended over an hour ago (a few per call). Part of
    /// the orphan sweep.
    pub(super) async fn sweep_abandoned_uploads(&self) -> Result<(), EngineError> {
        let now = self.now_ms() as u64;
        let page = self.store.list(&self.layout.upload_sessions_prefix(), None, MAX_LIST_LIMIT).await?;
        let stale: Vec<UploadId> = page
            .objects
            .iter()
            .filter_map(|m| UploadId::parse(m.key.strip_prefix(&self.layout.upload_sessions_prefix())?).ok())
            .filter(|id| id.started_ms().is_some_and(|ms| ms + UPLOAD_LIFETIME_MS + SWEEP_AFTER_MS < now))
            .take(SESSIONS_PER_SWEEP)
            .collect();
        for id in stale {
            let Ok((record, etag)) = self.session(&id).await else { continue };
            if record.state == SessionState::Publishing {
                // A completion that died after publishing may have made these chunks the
                // database's: leave them (only its small records stay behind).
                continue;
            }
            let _ = self.abandon(&id, record, etag).await;
        }
        Ok(())
    }
}
