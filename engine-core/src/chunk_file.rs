//! The database file as turso sees it: the pages of a checkpoint, read lazily from the
//! page cache. A page that is not cached is not fetched here (the isolate is
//! single-threaded and the store is async): the page is recorded as wanted and its read
//! stays pending (see [`StalledReads`]). The engine fetches the page from a
//! [`PageSource`] and completes the read, and turso goes on where it stopped; where turso
//! cannot wait, the read fails and the request runs again once the page is cached.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex};

use turso_core::{Buffer, Completion, File};

use crate::cache::{PageCache, PageKey};
use crate::error::EngineError;
use crate::io::{StalledRead, StalledReads};
use crate::manifest::Manifest;

/// Where pages that are not cached come from (the object store, through the engine).
#[async_trait::async_trait(?Send)]
pub trait PageSource {
    /// Fetches the pages `pages` (1-based numbers of the checkpoint) and at least their
    /// neighbours in one page group; returns every page fetched.
    async fn fetch_pages(&self, pages: &[u32]) -> Result<Vec<(u32, Arc<[u8]>)>, EngineError>;
}

/// Pages just fetched, by page number.
pub type FetchedPages = FxHashMap<u32, Arc<[u8]>>;

/// Which chunk object holds each page of a checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointView {
    pub page_size: u32,
    pub page_count: u32,
    pub pages_per_chunk: u32,
    pub chunks: Vec<Arc<str>>,
}

impl CheckpointView {
    pub fn from_manifest(m: &Manifest) -> Self {
        CheckpointView {
            page_size: m.page_size,
            page_count: m.page_count,
            pages_per_chunk: m.pages_per_chunk,
            chunks: m.chunks.iter().map(|k| Arc::from(k.as_str())).collect(),
        }
    }

    /// Cache key of page `page_no` (1-based), if the checkpoint has it.
    pub fn page_key(&self, page_no: u32) -> Option<PageKey> {
        if page_no == 0 || page_no > self.page_count {
            return None;
        }
        let idx = page_no - 1;
        let chunk = self.chunks.get((idx / self.pages_per_chunk) as usize)?;
        Some((chunk.clone(), idx % self.pages_per_chunk))
    }
}

/// Pages turso asked for that were not cached.
pub type WantedPages = Arc<Mutex<BTreeSet<u32>>>;

/// Pages fetched for the transaction in progress, by page number.
pub type PinnedPages = Arc<Mutex<FxHashMap<u32, Arc<[u8]>>>>;

pub struct ChunkFile {
    view: CheckpointView,
    cache: Arc<PageCache>,
    wanted: WantedPages,
    pinned: PinnedPages,
    stalled: StalledReads,
    /// Pages turso wrote to the file itself. The engine disables turso's checkpoints, so
    /// this stays empty in practice; it exists so a write can never be lost or misread.
    written: Mutex<BTreeMap<u32, Vec<u8>>>,
    size: Mutex<u64>,
    /// The image's page 1, kept once read (4 KiB, outside the cache budget): turso reads the
    /// header outside any statement, e.g. when an applied log record rewrites page 1, and
    /// a miss there cannot be fetched and retried.
    header_page: Mutex<Option<Arc<[u8]>>>,
}

impl ChunkFile {
    pub fn new(view: CheckpointView, cache: Arc<PageCache>, wanted: WantedPages, pinned: PinnedPages, stalled: StalledReads) -> Self {
        let size = view.page_count as u64 * view.page_size as u64;
        ChunkFile {
            view,
            cache,
            wanted,
            pinned,
            stalled,
            written: Mutex::new(BTreeMap::new()),
            size: Mutex::new(size),
            header_page: Mutex::new(None),
        }
    }

    fn size_now(&self) -> u64 {
        *self.size.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies `dst.len()` bytes at `pos`; returns false if a needed page is not cached.
    fn read_into(&self, pos: u64, dst: &mut [u8], fetched: Option<&FetchedPages>) -> bool {
        let page_size = self.view.page_size.max(1) as u64;
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let mut done = 0usize;
        let mut all_present = true;
        while done < dst.len() {
            let at = pos + done as u64;
            let page_no = (at / page_size) as u32 + 1;
            let in_page = (at % page_size) as usize;
            let n = (page_size as usize - in_page).min(dst.len() - done);
            let out = &mut dst[done..done + n];
            if let Some(p) = written.get(&page_no) {
                out.copy_from_slice(&p[in_page..in_page + n]);
            } else if let Some(key) = self.view.page_key(page_no) {
                let kept_header = match page_no {
                    1 => self.header_page.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                    _ => None,
                };
                let header_kept = kept_header.is_some();
                let pinned = || self.pinned.lock().unwrap_or_else(|p| p.into_inner()).get(&page_no).cloned();
                let just_fetched = || fetched.and_then(|f| f.get(&page_no)).cloned();
                match kept_header.or_else(pinned).or_else(just_fetched).or_else(|| self.cache.get(&key)) {
                    Some(p) if p.len() >= in_page + n => {
                        if page_no == 1 && !header_kept {
                            *self.header_page.lock().unwrap_or_else(|p| p.into_inner()) = Some(p.clone());
                        }
                        out.copy_from_slice(&p[in_page..in_page + n]);
                    }
                    _ => {
                        self.wanted.lock().unwrap_or_else(|p| p.into_inner()).insert(page_no);
                        all_present = false;
                    }
                }
            } else {
                out.fill(0);
            }
            done += n;
        }
        all_present
    }
}

impl File for ChunkFile {
    fn lock_file(&self, _exclusive: bool) -> turso_core::Result<()> {
        Ok(())
    }

    fn unlock_file(&self) -> turso_core::Result<()> {
        Ok(())
    }

    fn pread(&self, pos: u64, c: Completion) -> turso_core::Result<Completion> {
        let size = self.size_now();
        let buf = c.as_read().buf();
        let len = (buf.len() as u64).min(size.saturating_sub(pos)) as usize;
        if len == 0 {
            c.complete(0);
            return Ok(c);
        }
        let ok = self.read_into(pos, &mut buf.as_mut_slice()[..len], None);
        if ok {
            c.complete(len as i32);
        } else {
            self.stalled.lock().unwrap_or_else(|p| p.into_inner()).push(StalledRead { pos, completion: c.clone() });
        }
        Ok(c)
    }

    fn pwrite(&self, pos: u64, buffer: Arc<Buffer>, c: Completion) -> turso_core::Result<Completion> {
        let n = self.write_at(pos, buffer.as_slice());
        c.complete(n as i32);
        Ok(c)
    }

    fn pwritev(&self, pos: u64, buffers: Vec<Arc<Buffer>>, c: Completion) -> turso_core::Result<Completion> {
        let mut at = pos;
        for b in &buffers {
            at += self.write_at(at, b.as_slice()) as u64;
        }
        c.complete((at - pos) as i32);
        Ok(c)
    }

    fn sync(&self, c: Completion, _sync_type: turso_core::io::FileSyncType) -> turso_core::Result<Completion> {
        c.complete(0);
        Ok(c)
    }

    fn size(&self) -> turso_core::Result<u64> {
        Ok(self.size_now())
    }

    fn truncate(&self, len: u64, c: Completion) -> turso_core::Result<Completion> {
        *self.size.lock().unwrap_or_else(|p| p.into_inner()) = len;
        c.complete(0);
        Ok(c)
    }
}

impl ChunkFile {
    /// True while some read waits for pages.
    pub fn has_stalled_reads(&self) -> bool {
        !self.stalled.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Completes every stalled read whose pages are now at hand (`fetched` is read first,
    /// so a page the cache has already evicted again still serves the read it was fetched
    /// for); returns how many were completed. The others stay stalled, their pages wanted.
    pub fn complete_stalled(&self, fetched: &FetchedPages) -> usize {
        let stalled = std::mem::take(&mut *self.stalled.lock().unwrap_or_else(|p| p.into_inner()));
        let mut still = Vec::new();
        let mut completed = 0;
        for read in stalled {
            let buf = read.completion.as_read().buf();
            let len = (buf.len() as u64).min(self.size_now().saturating_sub(read.pos)) as usize;
            if self.read_into(read.pos, &mut buf.as_mut_slice()[..len], Some(fetched)) {
                read.completion.complete(len as i32);
                completed += 1;
            } else {
                still.push(read);
            }
        }
        self.stalled.lock().unwrap_or_else(|p| p.into_inner()).extend(still);
        completed
    }

    /// Whole-page writes only (turso writes the database file in pages).
    fn write_at(&self, pos: u64, data: &[u8]) -> usize {
        let page_size = self.view.page_size.max(1) as usize;
        if pos % page_size as u64 != 0 || data.len() % page_size != 0 {
            return 0; // reported to turso as a short write
        }
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        for (i, page) in data.chunks(page_size).enumerate() {
            written.insert((pos / page_size as u64) as u32 + 1 + i as u32, page.to_vec());
        }
        let end = pos + data.len() as u64;
        let mut size = self.size.lock().unwrap_or_else(|p| p.into_inner());
        *size = (*size).max(end);
        data.len()
    }
}
