//! Exporting one commit's state as a SQLite database file, produced one chunk at a time in
//! bounded memory: each piece is a chunk of the state's checkpoint image (one range GET)
//! with the pages changed after that checkpoint laid over it. Other requests keep being
//! served meanwhile: the export reads only immutable objects.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::chunk_file::CheckpointView;
use crate::error::EngineError;
use crate::store::{ByteRange, ObjectStore};

use super::Database;

/// The SQLite file of one state, handed out piece by piece.
pub struct FileExport {
    store: Rc<dyn ObjectStore>,
    view: CheckpointView,
    /// Pages changed after the image's checkpoint: their newest version.
    overlay: BTreeMap<u32, Vec<u8>>,
    page_size: u32,
    page_count: u32,
    /// The next chunk index to hand out.
    next: u32,
}

impl FileExport {
    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.page_count as u64 * self.page_size as u64
    }

    pub fn is_empty(&self) -> bool {
        self.page_count == 0
    }

    /// Pieces follow the image's chunks (a state with no image yet: 64 pages each).
    fn pages_per_piece(&self) -> u32 {
        if self.view.page_count == 0 {
            crate::manifest::DEFAULT_PAGES_PER_CHUNK
        } else {
            self.view.pages_per_chunk.max(1)
        }
    }

    /// The next piece of the file (`None` once all was handed out).
    pub async fn next_piece(&mut self) -> Result<Option<Vec<u8>>, EngineError> {
        let per = self.pages_per_piece();
        let first = self.next as u64 * per as u64 + 1;
        if first > self.page_count as u64 {
            return Ok(None);
        }
        let first = first as u32;
        let last = (first - 1).saturating_add(per).min(self.page_count);
        let size = self.page_size as usize;
        let mut piece = vec![0u8; (last - first + 1) as usize * size];
        // Pages of the image this piece needs that no newer version replaces.
        let from_image = (first..=last.min(self.view.page_count)).filter(|p| !self.overlay.contains_key(p)).count();
        if from_image > 0 {
            let chunk = self.next as usize;
            let key = self.view.chunks.get(chunk).ok_or_else(|| {
                EngineError::Corrupt(format!("the image has {} chunks, page {first} needs chunk {chunk}", self.view.chunks.len()))
            })?;
            let image_last = last.min(self.view.page_count);
            let length = (image_last - first + 1) as u64 * size as u64;
            let range = ByteRange { offset: 0, length };
            let obj = self.store.get(key, Some(range)).await?.ok_or_else(|| {
                EngineError::OutsideHistory(format!("chunk {key} of that state was collected: it left the history window"))
            })?;
            if obj.body.len() as u64 != length {
                return Err(EngineError::Corrupt(format!("chunk {key} answered {} bytes, expected {length}", obj.body.len())));
            }
            piece[..length as usize].copy_from_slice(&obj.body);
        }
        for (page_no, bytes) in self.overlay.range(first..=last) {
            let at = (page_no - first) as usize * size;
            piece[at..at + size].copy_from_slice(bytes);
        }
        if first == 1 {
            standalone_header(&mut piece, self.page_count);
        }
        self.next += 1;
        Ok(Some(piece))
    }
}

/// Makes page 1's header describe a standalone file: rollback-journal mode (the file needs
/// no WAL beside it), and its size in pages valid.
fn standalone_header(page1: &mut [u8], page_count: u32) {
    if page1.len() < 100 {
        return;
    }
    page1[18] = 1;
    page1[19] = 1;
    page1[28..32].copy_from_slice(&page_count.to_be_bytes());
    // The size above is trusted only while "version-valid-for" equals the change counter.
    let counter: [u8; 4] = page1[24..28].try_into().expect("4 bytes");
    page1[92..96].copy_from_slice(&counter);
}

impl Database {
    /// This state (a past one from [`Database::past`], or the newest) as a SQLite file.
    pub fn export_file(&self) -> Result<FileExport, EngineError> {
        let local = self.local()?;
        let (overlay, size) = local.durable_pages()?;
        let page_count = if size > 0 { size } else { self.image.view.page_count };
        Ok(FileExport {
            store: self.store.clone(),
            view: self.view(),
            overlay,
            page_size: local.page_size(),
            page_count,
            next: 0,
        })
    }
}
