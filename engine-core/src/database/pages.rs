//! Lazy page reads and (re)building the local database on its checkpoint. A page turso
//! needs that is not cached is fetched with its aligned page group (one range GET, six at a
//! time): while a statement steps, the statement waits for it and goes on; where turso
//! cannot wait (opening, BEGIN/COMMIT), the request fails locally and runs again once the
//! group is fetched ("fetch first and retry"; those pages are pinned for the retry).

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::future::join_all;

use crate::chunk_file::{CheckpointView, PageSource};
use crate::error::EngineError;
use crate::local::LocalDb;
use crate::manifest::Manifest;
use crate::store::ByteRange;

use super::{Database, MAX_FETCH_ROUNDS};

/// A run of pages inside one chunk object, fetched with one range GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PageRun {
    chunk: u32,
    /// Index of the first page within the chunk.
    start: u32,
    count: u32,
}

impl Database {
    /// The image the local database reads pages from.
    pub(super) fn view(&self) -> CheckpointView {
        let mut view = self.image.view.clone();
        if view.page_size == 0 {
            view.page_size = 4096;
        }
        view
    }

    /// Puts the pages the image's manifest carries (see [`Manifest::pages`]) into the cache
    /// under their chunks' keys, where opening the local database finds them.
    pub(super) fn cache_embedded_pages(&self, m: &Manifest) {
        let view = self.view();
        for page in &m.pages {
            if let Some(key) = view.page_key(page.page_no) {
                self.cache.insert(key, page.bytes.as_slice().into());
            }
        }
    }

    /// A local database on the base checkpoint with an empty WAL.
    pub(super) async fn create_local(&self) -> Result<LocalDb, EngineError> {
        let mut fetched = rustc_hash::FxHashMap::default();
        for _ in 0..MAX_FETCH_ROUNDS {
            match LocalDb::create(self.view(), self.cache.clone(), self.host.clone(), fetched.clone()) {
                Ok(local) => return Ok(local),
                Err(EngineError::PagesMissing(pages)) => {
                    fetched.extend(self.fetch_page_bytes(&pages).await?);
                }
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Internal("opening the database kept missing pages".into()))
    }

    /// Drops local frames that are not durable. If that fails, the local copy is rebuilt
    /// from the store; if that fails too, the next request rebuilds it.
    pub(super) async fn discard_local(&mut self) -> Result<(), EngineError> {
        let Some(local) = self.local.take() else {
            return self.reload().await;
        };
        let mut attempt = local.discard_unshipped();
        for _ in 0..MAX_FETCH_ROUNDS {
            match attempt {
                Ok(local) => {
                    self.local = Some(local);
                    return Ok(());
                }
                Err((EngineError::PagesMissing(_), reopen)) => {
                    let wanted = reopen.take_wanted();
                    for (page_no, bytes) in self.fetch_page_bytes(&wanted).await? {
                        reopen.pin(page_no, bytes);
                    }
                    attempt = reopen.open();
                }
                Err(_) => break,
            }
        }
        self.reload().await
    }

    /// After a request missed `pages`: fetches their groups and pins them to the local
    /// database for the retry. A page outside the checkpoint, or a chunk that is gone,
    /// moves onto the newest manifest instead.
    pub(super) async fn fetch_for_retry(&mut self, pages: &[u32]) -> Result<(), EngineError> {
        match self.fetch_page_bytes(pages).await {
            Ok(fetched) if fetched.is_empty() => Err(EngineError::Corrupt(format!(
                "pages {pages:?} are needed but are not part of checkpoint {}",
                self.base.generation
            ))),
            Ok(fetched) => {
                let local = self.local()?;
                for (page_no, bytes) in fetched {
                    local.pin(page_no, bytes);
                }
                Ok(())
            }
            Err(EngineError::BaseGone(_)) => self.reload().await,
            Err(e) => Err(e),
        }
    }

    /// Fetches the page groups holding `pages` into the cache; returns every page fetched.
    pub(super) async fn fetch_page_bytes(&self, pages: &[u32]) -> Result<Vec<(u32, Arc<[u8]>)>, EngineError> {
        self.fetch_page_runs(pages, self.config.fetch_group_pages).await
    }

    /// Fetches, for each of `pages`, the run of `run_pages` pages (at most to the end of its
    /// chunk) that starts at the page's aligned group; returns every page fetched.
    async fn fetch_page_runs(&self, pages: &[u32], run_pages: u32) -> Result<Vec<(u32, Arc<[u8]>)>, EngineError> {
        let view = self.view();
        let group = self.config.fetch_group_pages.clamp(1, view.pages_per_chunk.max(1));
        let mut runs = BTreeSet::new();
        for &page_no in pages {
            if page_no == 0 || page_no > view.page_count {
                continue;
            }
            let idx = page_no - 1;
            let chunk = idx / view.pages_per_chunk;
            let first_in_chunk = chunk * view.pages_per_chunk;
            let start = (idx - first_in_chunk) / group * group;
            let in_chunk = view.pages_per_chunk.min(view.page_count - first_in_chunk);
            let count = run_pages.max(group).min(in_chunk - start);
            runs.insert(PageRun { chunk, start, count });
        }
        let runs: Vec<PageRun> = runs.into_iter().collect();
        let page_size = view.page_size as u64;
        let mut fetched = Vec::new();
        for batch in runs.chunks(self.config.fetch_concurrency.max(1)) {
            let fetches = batch.iter().map(|run| {
                let key = view.chunks[run.chunk as usize].clone();
                let store = self.store.clone();
                let range = ByteRange { offset: run.start as u64 * page_size, length: run.count as u64 * page_size };
                async move {
                    let got = store.get(&key, Some(range)).await;
                    (key, got)
                }
            });
            for (run, (key, got)) in batch.iter().zip(join_all(fetches).await) {
                let Some(obj) = got? else {
                    return Err(EngineError::BaseGone(key.to_string()));
                };
                if obj.body.len() as u64 != run.count as u64 * page_size {
                    return Err(EngineError::Corrupt(format!(
                        "chunk {key} answered {} bytes for pages {}..{}, expected {}",
                        obj.body.len(),
                        run.start,
                        run.start + run.count,
                        run.count as u64 * page_size
                    )));
                }
                for (i, page) in obj.body.chunks_exact(page_size as usize).enumerate() {
                    let bytes: Arc<[u8]> = page.into();
                    let index = run.start + i as u32;
                    self.cache.insert((key.clone(), index), bytes.clone());
                    fetched.push((run.chunk * view.pages_per_chunk + index + 1, bytes));
                }
            }
        }
        Ok(fetched)
    }
}

/// The pages a statement waits for. A miss right where the last fetch ended is a scan
/// going through the file: the rest of that chunk and whole chunks after it are fetched
/// (one GET each, as many as may be in flight at once while the cache has room for them to
/// wait there), so a scan makes one R2 call per 256 KiB chunk, not one per 64 KiB group.
#[async_trait::async_trait(?Send)]
impl PageSource for Database {
    async fn fetch_pages(&self, pages: &[u32]) -> Result<Vec<(u32, Arc<[u8]>)>, EngineError> {
        let view = self.view();
        let group = self.config.fetch_group_pages.clamp(1, view.pages_per_chunk.max(1));
        let group_of = |page_no: u32| page_no.saturating_sub(1) / group;
        let fetched = match pages {
            [page_no] if group_of(*page_no) == group_of(self.scan_resumes_at.get()) => {
                let ppc = view.pages_per_chunk.max(1);
                let chunk_bytes = ppc as usize * view.page_size as usize;
                let room = self.cache.stats().budget / (4 * chunk_bytes).max(1);
                let ahead = (self.config.fetch_concurrency.max(1) - 1).min(room) as u32;
                let chunk = (page_no - 1) / ppc;
                let mut wanted = vec![*page_no];
                wanted.extend((1..=ahead).map(|k| (chunk + k) * ppc + 1));
                self.fetch_page_runs(&wanted, ppc).await?
            }
            _ => self.fetch_page_bytes(pages).await?,
        };
        if let Some(last) = fetched.iter().map(|(page_no, _)| *page_no).max() {
            self.scan_resumes_at.set(last + 1);
        }
        Ok(fetched)
    }
}
