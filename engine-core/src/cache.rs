//! The tier-1 cache: page images from immutable checkpoint chunks, kept in isolate memory
//! under a byte budget and evicted least-recently-used. Shared by every database of an
//! isolate. Chunk objects never change, so an entry is valid for as long as it exists.

use std::sync::{Arc, Mutex};

use lru::LruCache;

/// Default byte budget (the isolate has 128 MB for everything).
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

/// A page of a chunk object: (chunk object key, page index within the chunk).
pub type PageKey = (Arc<str>, u32);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub bytes: usize,
    pub budget: usize,
    pub entries: usize,
}

pub struct PageCache {
    inner: Mutex<Inner>,
}

struct Inner {
    pages: LruCache<PageKey, Arc<[u8]>>,
    stats: CacheStats,
}

impl PageCache {
    pub fn new(budget_bytes: usize) -> Self {
        PageCache {
            inner: Mutex::new(Inner {
                pages: LruCache::unbounded(),
                stats: CacheStats { budget: budget_bytes, ..Default::default() },
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the map itself is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &PageKey) -> Option<Arc<[u8]>> {
        let mut inner = self.lock();
        match inner.pages.get(key).cloned() {
            Some(page) => {
                inner.stats.hits += 1;
                Some(page)
            }
            None => {
                inner.stats.misses += 1;
                None
            }
        }
    }


    pub fn insert(&self, key: PageKey, page: Arc<[u8]>) {
        let mut inner = self.lock();
        let len = page.len();
        if let Some(old) = inner.pages.put(key, page) {
            inner.stats.bytes -= old.len();
        }
        inner.stats.bytes += len;
        while inner.stats.bytes > inner.stats.budget {
            match inner.pages.pop_lru() {
                Some((_, evicted)) => {
                    inner.stats.bytes -= evicted.len();
                    inner.stats.evictions += 1;
                }
                None => break,
            }
        }
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats { entries: inner.pages.len(), ..inner.stats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_evicting_least_recently_used() {
        let c = PageCache::new(3 * 100);
        let k = |i: u32| (Arc::<str>::from("chunk"), i);
        for i in 0..3 {
            c.insert(k(i), vec![0u8; 100].into());
        }
        assert!(c.get(&k(0)).is_some()); // 0 is now most recent
        c.insert(k(3), vec![0u8; 100].into());
        assert!(c.get(&k(1)).is_none(), "least recently used goes first");
        assert!(c.get(&k(0)).is_some());
        let s = c.stats();
        assert_eq!((s.bytes, s.entries, s.evictions), (300, 3, 1));
    }
}
