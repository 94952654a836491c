//! The commit log record: the WAL frames one committed write transaction (or one group of
//! them) produced, stored as one immutable object per commit.
//!
//! Format (little endian):
//! ```text
//! magic "TWLR" | version u8 = 2 or 3 | reserved [u8; 3]
//! seq u64 | page_size u32 | frame_count u32 | nonce [u8; 16] | committed_ms u64
//! (version 3 only) snapshot_len u32 | snapshot JSON [snapshot_len]
//! frame_count × (page_no u32 | db_size_after u32 | page bytes [page_size])
//! crc32 u32 over everything before it
//! ```
//! Version 1 lacks `committed_ms` (read as 0). Version 3 records are **snapshot records**
//! (a restore, an import, a fork's first record, a deletion): the state they commit is the
//! checkpoint image they name (`Snapshot`: page count and the chunk key of every chunk,
//! possibly another database's) with their frames on top, whatever came before. Records
//! without a snapshot are still written as version 2, which older Workers read. `committed_ms` is the commit time: never
//! earlier than the previous record's, so times sort in log order (history looks commits
//! up by time).
//! `db_size_after` is non-zero only on the last frame of each committed transaction (as in
//! SQLite's WAL). The nonce makes every attempt's bytes unique, so after an ambiguous PUT
//! the writer can tell its own record from another writer's by reading it back.

use thiserror::Error;

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"TWLR";
const VERSION: u8 = 3;
const FRAMES_VERSION: u8 = 2;
const V1_HEADER_LEN: usize = 4 + 1 + 3 + 8 + 4 + 4 + 16;
const HEADER_LEN: usize = V1_HEADER_LEN + 8;
const FRAME_HEADER_LEN: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub page_no: u32,
    /// Database size in pages after the commit this frame ends; 0 if it ends none.
    pub db_size_after: u32,
    pub page: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub seq: u64,
    pub page_size: u32,
    pub nonce: [u8; 16],
    /// Commit time, ms since the Unix epoch (0 in version-1 records).
    pub committed_ms: u64,
    /// The checkpoint image this record's frames apply to, replacing every earlier state
    /// (`None`: they apply to the state of the record before).
    pub snapshot: Option<Snapshot>,
    pub frames: Vec<Frame>,
}

/// A whole-database image a snapshot record starts from: immutable chunk objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Database size in pages of the image (before the record's frames).
    pub page_count: u32,
    pub pages_per_chunk: u32,
    /// Chunk `i` holds pages `i * pages_per_chunk + 1 ..`; keys may belong to another
    /// database (a fork shares its parent's chunks).
    pub chunks: Vec<String>,
    /// Why the image replaced the state before it.
    pub origin: SnapshotOrigin,
}

/// What a snapshot record did, kept for history listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SnapshotOrigin {
    /// The database was restored to the state after log record `seq`.
    Restore { seq: u64 },
    /// A SQLite database file (or SQL dump) was imported.
    Import,
    /// The first record of a fork of `parent` at its log record `seq`.
    Fork { parent: String, seq: u64 },
    /// The database was deleted: it is empty again. With `purge` its history ended there
    /// (the objects of the states before were deleted at once); without, the states
    /// before stay restorable until they leave the history window.
    Delete {
        #[serde(default)]
        purge: bool,
    },
}

impl Snapshot {
    /// Database size in pages once `frames` (the record's) are applied on top.
    pub fn size_after(&self, frames: &[Frame]) -> u32 {
        frames.last().map(|f| f.db_size_after).unwrap_or(self.page_count)
    }
}
/// Bytes at the start of a record that hold its sequence number and commit time (history
/// reads just these to find a commit by time).
pub const TIMED_HEADER_LEN: u64 = HEADER_LEN as u64;

/// What a record's header says, read without the rest of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub seq: u64,
    pub committed_ms: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("log record is truncated or has trailing bytes")]
    Length,
    #[error("log record has a bad magic number")]
    Magic,
    #[error("log record has format version {0}, newer than this server reads (up to {VERSION}); upgrade the Worker")]
    NewerVersion(u8),
    #[error("log record checksum mismatch")]
    Checksum,
    #[error("log record is malformed: {0}")]
    Malformed(&'static str),
}

/// What a record says about itself besides its frames and snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHead {
    pub seq: u64,
    pub page_size: u32,
    pub nonce: [u8; 16],
    pub committed_ms: u64,
}

/// A record's bytes, written a frame at a time: a commit's frames go from the WAL straight
/// into the body, never held a second time as [`Frame`]s.
pub struct RecordWriter {
    out: Vec<u8>,
    page_size: usize,
}

impl RecordWriter {
    pub fn new(head: RecordHead, snapshot: Option<&Snapshot>, frame_count: u32) -> Self {
        let page_size = head.page_size as usize;
        let snapshot = snapshot.map(|s| serde_json::to_vec(s).expect("snapshot serializes"));
        let snapshot_len = snapshot.as_ref().map_or(0, |s| 4 + s.len());
        let mut out =
            Vec::with_capacity(HEADER_LEN + snapshot_len + frame_count as usize * (FRAME_HEADER_LEN + page_size) + 4);
        out.extend_from_slice(MAGIC);
        out.push(if snapshot.is_some() { VERSION } else { FRAMES_VERSION });
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&head.seq.to_le_bytes());
        out.extend_from_slice(&head.page_size.to_le_bytes());
        out.extend_from_slice(&frame_count.to_le_bytes());
        out.extend_from_slice(&head.nonce);
        out.extend_from_slice(&head.committed_ms.to_le_bytes());
        if let Some(snapshot) = &snapshot {
            out.extend_from_slice(&(snapshot.len() as u32).to_le_bytes());
            out.extend_from_slice(snapshot);
        }
        RecordWriter { out, page_size }
    }

    /// Appends the next frame (as many as `new` was told, in order).
    pub fn push_frame(&mut self, page_no: u32, db_size_after: u32, page: &[u8]) {
        debug_assert_eq!(page.len(), self.page_size);
        self.out.extend_from_slice(&page_no.to_le_bytes());
        self.out.extend_from_slice(&db_size_after.to_le_bytes());
        self.out.extend_from_slice(page);
    }

    /// The record's bytes, with their checksum.
    pub fn finish(mut self) -> Vec<u8> {
        let crc = crc32fast::hash(&self.out);
        self.out.extend_from_slice(&crc.to_le_bytes());
        self.out
    }
}

impl LogRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut writer = RecordWriter::new(
            RecordHead { seq: self.seq, page_size: self.page_size, nonce: self.nonce, committed_ms: self.committed_ms },
            self.snapshot.as_ref(),
            self.frames.len() as u32,
        );
        for f in &self.frames {
            writer.push_frame(f.page_no, f.db_size_after, &f.page);
        }
        writer.finish()
    }

    /// The header of a record from its first [`TIMED_HEADER_LEN`] bytes (unchecked: the
    /// checksum covers the whole record).
    pub fn decode_header(prefix: &[u8]) -> Result<RecordHeader, RecordError> {
        if prefix.len() < V1_HEADER_LEN {
            return Err(RecordError::Length);
        }
        if &prefix[0..4] != MAGIC {
            return Err(RecordError::Magic);
        }
        let u64_at = |at: usize| u64::from_le_bytes(prefix[at..at + 8].try_into().expect("8 bytes"));
        let committed_ms = match prefix[4] {
            1 => 0,
            FRAMES_VERSION | VERSION if prefix.len() >= HEADER_LEN => u64_at(40),
            FRAMES_VERSION | VERSION => return Err(RecordError::Length),
            0 => return Err(RecordError::Magic),
            newer => return Err(RecordError::NewerVersion(newer)),
        };
        Ok(RecordHeader { seq: u64_at(8), committed_ms })
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() < V1_HEADER_LEN + 4 {
            return Err(RecordError::Length);
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if &body[0..4] != MAGIC {
            return Err(RecordError::Magic);
        }
        let version = body[4];
        let mut header_len = match version {
            1 => V1_HEADER_LEN,
            FRAMES_VERSION | VERSION => HEADER_LEN,
            0 => return Err(RecordError::Magic),
            newer => return Err(RecordError::NewerVersion(newer)),
        };
        if body.len() < header_len {
            return Err(RecordError::Length);
        }
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().map_err(|_| RecordError::Length)?) {
            return Err(RecordError::Checksum);
        }
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let seq = u64_at(8);
        let page_size = u32_at(16);
        let frame_count = u32_at(20) as usize;
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&body[24..40]);
        let committed_ms = if header_len == HEADER_LEN { u64_at(40) } else { 0 };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(RecordError::Malformed("page size"));
        }
        let mut snapshot = None;
        if version == VERSION {
            let len_end = header_len + 4;
            let len = body.get(header_len..len_end).ok_or(RecordError::Length)?;
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let json = body.get(len_end..len_end.checked_add(len).ok_or(RecordError::Length)?).ok_or(RecordError::Length)?;
            let s: Snapshot = serde_json::from_slice(json).map_err(|_| RecordError::Malformed("snapshot"))?;
            if s.pages_per_chunk == 0 || s.chunks.len() != s.page_count.div_ceil(s.pages_per_chunk) as usize {
                return Err(RecordError::Malformed("snapshot chunk count"));
            }
            snapshot = Some(s);
            header_len = len_end + len;
        }
        let frame_len = FRAME_HEADER_LEN + page_size as usize;
        if frame_count.checked_mul(frame_len).and_then(|n| n.checked_add(header_len)) != Some(body.len()) {
            return Err(RecordError::Length);
        }
        let mut frames = Vec::with_capacity(frame_count);
        for i in 0..frame_count {
            let at = header_len + i * frame_len;
            let page_no = u32_at(at);
            if page_no == 0 {
                return Err(RecordError::Malformed("page number 0"));
            }
            frames.push(Frame {
                page_no,
                db_size_after: u32_at(at + 4),
                page: body[at + FRAME_HEADER_LEN..at + frame_len].to_vec(),
            });
        }
        match frames.last() {
            Some(last) if last.db_size_after > 0 => {}
            // A snapshot is a state by itself; its frames may be none.
            None if snapshot.is_some() => {}
            _ => return Err(RecordError::Malformed("does not end with a commit frame")),
        }
        Ok(LogRecord { seq, page_size, nonce, committed_ms, snapshot, frames })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LogRecord {
        LogRecord {
            seq: 42,
            page_size: 512,
            nonce: [7; 16],
            committed_ms: 1_767_225_600_123,
            snapshot: None,
            frames: vec![
                Frame { page_no: 1, db_size_after: 0, page: vec![1; 512] },
                Frame { page_no: 3, db_size_after: 3, page: vec![2; 512] },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(LogRecord::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn headers_read_alone() {
        let bytes = sample().encode();
        let h = LogRecord::decode_header(&bytes[..TIMED_HEADER_LEN as usize]).unwrap();
        assert_eq!(h, RecordHeader { seq: 42, committed_ms: 1_767_225_600_123 });
        assert_eq!(LogRecord::decode_header(&bytes[..20]), Err(RecordError::Length));
    }

    #[test]
    fn detects_corruption_truncation_and_bad_shape() {
        let mut bytes = sample().encode();
        bytes[100] ^= 1;
        assert_eq!(LogRecord::decode(&bytes), Err(RecordError::Checksum));
        let bytes = sample().encode();
        assert!(LogRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut no_commit = sample();
        no_commit.frames[1].db_size_after = 0;
        assert_eq!(LogRecord::decode(&no_commit.encode()), Err(RecordError::Malformed("does not end with a commit frame")));
        let mut newer = sample().encode();
        newer[4] = 4;
        assert_eq!(LogRecord::decode(&newer), Err(RecordError::NewerVersion(4)));
    }

    #[test]
    fn snapshot_records_round_trip_and_plain_records_stay_version_2() {
        let plain = sample().encode();
        assert_eq!(plain[4], 2);
        let mut r = sample();
        r.snapshot = Some(Snapshot {
            page_count: 70,
            pages_per_chunk: 64,
            chunks: vec!["db/p/chunk/a".into(), "db/p/chunk/b".into()],
            origin: SnapshotOrigin::Fork { parent: "p".into(), seq: 9 },
        });
        let bytes = r.encode();
        assert_eq!(bytes[4], 3);
        assert_eq!(LogRecord::decode(&bytes).unwrap(), r);
        r.frames.clear();
        assert_eq!(LogRecord::decode(&r.encode()).unwrap(), r);
        r.snapshot.as_mut().unwrap().chunks.pop();
        assert_eq!(LogRecord::decode(&r.encode()), Err(RecordError::Malformed("snapshot chunk count")));
    }

    #[test]
    fn reads_version_1_records() {
        let r = sample();
        let mut v1 = r.encode();
        v1.drain(40..48);
        v1[4] = 1;
        let body_len = v1.len() - 4;
        let crc = crc32fast::hash(&v1[..body_len]);
        v1[body_len..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(LogRecord::decode(&v1).unwrap(), LogRecord { committed_ms: 0, ..r });
    }
}
