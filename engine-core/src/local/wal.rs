//! The local WAL: reading the frames that are durable, and appending frames other writers
//! made durable.

use std::collections::BTreeMap;

use super::LocalDb;
use crate::error::{sql_err, EngineError};
use crate::log_record::Frame;

/// SQLite's WAL header and frame header sizes.
const WAL_HEADER_LEN: u64 = 32;
const WAL_FRAME_HEADER_LEN: usize = 24;

/// Where the durable WAL holds each page ([`LocalDb::durable_wal_index`]).
#[derive(Debug)]
pub struct WalIndex {
    /// Page number → the frame (1-based) with its newest image.
    pub newest_frame: BTreeMap<u32, u64>,
    /// The database size in pages after the last durable commit (0 if the WAL is empty).
    pub db_size: u32,
}

impl LocalDb {
    /// Reads the durable WAL's frames in order into one buffer: `visit` gets each frame's
    /// number, its page number and its page image.
    fn read_durable_frames(&self, mut visit: impl FnMut(u64, u32, &[u8])) -> Result<u32, EngineError> {
        let mut db_size = 0;
        let mut buf = vec![0u8; WAL_FRAME_HEADER_LEN + self.page_size as usize];
        for frame_no in 1..=self.durable_frames {
            let info = self.conn.wal_get_frame(frame_no, &mut buf).map_err(sql_err)?;
            visit(frame_no, info.page_no, &buf[WAL_FRAME_HEADER_LEN..]);
            if info.db_size > 0 {
                db_size = info.db_size;
            }
        }
        Ok(db_size)
    }

    /// Which durable WAL frame holds the newest image of each page, and the database size
    /// after the last durable commit; no page is kept.
    pub fn durable_wal_index(&self) -> Result<WalIndex, EngineError> {
        let mut newest_frame = BTreeMap::new();
        let db_size = self.read_durable_frames(|frame_no, page_no, _| {
            newest_frame.insert(page_no, frame_no);
        })?;
        Ok(WalIndex { newest_frame, db_size })
    }

    /// The newest image of every page in the durable WAL, and the database size in pages
    /// after the last durable commit (0 if the WAL is empty).
    pub fn durable_pages(&self) -> Result<(BTreeMap<u32, Vec<u8>>, u32), EngineError> {
        let mut pages = BTreeMap::new();
        let db_size = self.read_durable_frames(|_, page_no, page| {
            pages.insert(page_no, page.to_vec());
        })?;
        Ok((pages, db_size))
    }

    /// The database size in pages after the last durable commit (0 if the WAL is empty): the
    /// newest durable frame that ends a commit says it, so the walk back usually reads one.
    pub fn durable_db_size(&self) -> Result<u32, EngineError> {
        let mut buf = vec![0u8; WAL_FRAME_HEADER_LEN + self.page_size as usize];
        for frame_no in (1..=self.durable_frames).rev() {
            let info = self.conn.wal_get_frame(frame_no, &mut buf).map_err(sql_err)?;
            if info.db_size > 0 {
                return Ok(info.db_size);
            }
        }
        Ok(0)
    }

    /// The page image durable WAL frame `frame_no` (1-based) holds.
    pub fn frame_page(&self, frame_no: u64) -> Result<Vec<u8>, EngineError> {
        let mut buf = vec![0u8; WAL_FRAME_HEADER_LEN + self.page_size as usize];
        self.conn.wal_get_frame(frame_no, &mut buf).map_err(sql_err)?;
        buf.drain(..WAL_FRAME_HEADER_LEN);
        Ok(buf)
    }

    /// Durable WAL frames `from..=to` (1-based), as log frames.
    pub fn frames(&self, from: u64, to: u64) -> Result<Vec<Frame>, EngineError> {
        let mut frames = Vec::new();
        self.visit_frames(from, to, |page_no, db_size_after, page| {
            frames.push(Frame { page_no, db_size_after, page: page.to_vec() })
        })?;
        Ok(frames)
    }

    /// Reads WAL frames `from..=to` (1-based) in order, one buffer for all: `visit` gets
    /// each frame's page number, the database size it commits (0 if none) and its page.
    pub fn visit_frames(&self, from: u64, to: u64, mut visit: impl FnMut(u32, u32, &[u8])) -> Result<(), EngineError> {
        let mut buf = vec![0u8; WAL_FRAME_HEADER_LEN + self.page_size as usize];
        for frame_no in from..=to {
            let info = self.conn.wal_get_frame(frame_no, &mut buf).map_err(sql_err)?;
            visit(info.page_no, info.db_size, &buf[WAL_FRAME_HEADER_LEN..]);
        }
        Ok(())
    }

    /// The size of a WAL of `frames` frames.
    pub(super) fn wal_bytes(&self, frames: u64) -> u64 {
        wal_bytes(frames, self.page_size)
    }

    /// The bytes `frames` frames take in the WAL.
    pub fn frames_bytes(&self, frames: u64) -> u64 {
        frames * (WAL_FRAME_HEADER_LEN as u64 + self.page_size as u64)
    }

    /// WAL frames committed locally, durable or not.
    pub fn wal_frames(&self) -> Result<u64, EngineError> {
        Ok(self.conn.wal_state().map_err(sql_err)?.max_frame)
    }

    /// WAL frames committed locally and not yet durable.
    pub fn unshipped_frame_count(&self) -> Result<u64, EngineError> {
        Ok(self.wal_frames()?.saturating_sub(self.durable_frames))
    }

    /// The first `frames` WAL frames are now durable (shipped, or the caller's own).
    pub fn mark_durable(&mut self, frames: u64) {
        self.durable_frames = frames;
    }

    /// Appends durable frames (another writer's commits) to the local WAL.
    pub fn apply_frames(&mut self, frames: &[Frame], page_size: u32) -> Result<(), EngineError> {
        if page_size != self.page_size {
            // A new database adopts the page size of the first record it sees.
            if self.durable_frames == 0 && self.wal_frames()? == 0 {
                self.page_size = page_size;
            } else {
                return Err(EngineError::Corrupt(format!(
                    "log record page size {page_size} differs from the database's {}",
                    self.page_size
                )));
            }
        }
        let mut buf = vec![0u8; WAL_FRAME_HEADER_LEN + page_size as usize];
        self.conn.wal_insert_begin().map_err(sql_err)?;
        let mut next = self.durable_frames;
        let mut result = Ok(());
        for f in frames {
            next += 1;
            buf[..WAL_FRAME_HEADER_LEN].fill(0);
            buf[0..4].copy_from_slice(&f.page_no.to_be_bytes());
            buf[4..8].copy_from_slice(&f.db_size_after.to_be_bytes());
            buf[WAL_FRAME_HEADER_LEN..].copy_from_slice(&f.page);
            if let Err(e) = self.conn.wal_insert_frame(next, &buf) {
                // A page read that missed the cache is not corruption: the caller starts over.
                result = Err(self.missing_or(EngineError::Corrupt(format!("applying log frame {next}: {e}"))));
                break;
            }
        }
        let end = self.conn.wal_insert_end(false);
        result?;
        if let Err(e) = end {
            // Ending the insert session cannot fail to commit the frames (they end in a
            // commit frame); what follows, reading the schema again if they changed it, can
            // miss pages. It is read again, with them fetched, before the next statement.
            if !self.has_wanted() {
                return Err(sql_err(e));
            }
            self.schema_behind.set(true);
        }
        self.durable_frames = next;
        Ok(())
    }
}

/// The size of a WAL of `frames` frames of `page_size` pages (an empty WAL has no header).
pub(super) fn wal_bytes(frames: u64, page_size: u32) -> u64 {
    if frames == 0 {
        0
    } else {
        WAL_HEADER_LEN + frames * (WAL_FRAME_HEADER_LEN as u64 + page_size as u64)
    }
}
