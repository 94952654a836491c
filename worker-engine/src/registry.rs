//! The databases this isolate has open: its only cache. Nothing here is authoritative; an
//! entry can be dropped at any time and is rebuilt from R2 on next use.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use engine_core::store::{CountingStore, StoreCounts};
use engine_core::{Database, DbConfig, EngineError, Layout, ObjectStore};
use futures::lock::{Mutex, MutexGuard};
use r2_backend::R2Store;

/// Open databases kept per isolate (each holds its pages in memory).
const MAX_OPEN_DATABASES: usize = 16;

pub struct DbSlot {
    pub store: Rc<CountingStore<dyn ObjectStore>>,
    db: Mutex<Option<Database>>,
    last_used: RefCell<f64>,
}

thread_local! {
    static OPEN: RefCell<HashMap<String, Rc<DbSlot>>> = RefCell::new(HashMap::new());
}

/// A database held for one request: requests to one database run one at a time.
pub struct HeldDb<'a> {
    pub slot: &'a DbSlot,
    guard: MutexGuard<'a, Option<Database>>,
}

impl HeldDb<'_> {
    pub fn db(&mut self) -> &mut Database {
        self.guard.as_mut().expect("opened in hold()")
    }

    /// Forget the in-memory state (after an internal fault); the next request rebuilds it.
    pub fn drop_state(&mut self) {
        *self.guard = None;
    }

    pub fn counts(&self) -> StoreCounts {
        self.slot.store.counts()
    }
}

pub fn slot(name: &str, bucket: worker::Bucket) -> Rc<DbSlot> {
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        if let Some(s) = open.get(name) {
            *s.last_used.borrow_mut() = js_sys::Date::now();
            return s.clone();
        }
        if open.len() >= MAX_OPEN_DATABASES {
            // Evict the least recently used database nobody is using right now.
            let idle = open
                .iter()
                .filter(|(_, s)| Rc::strong_count(s) == 1)
                .min_by(|a, b| a.1.last_used.borrow().total_cmp(&b.1.last_used.borrow()))
                .map(|(k, _)| k.clone());
            if let Some(k) = idle {
                open.remove(&k);
            }
        }
        let r2: Rc<dyn ObjectStore> = Rc::new(R2Store::new(bucket));
        let s = Rc::new(DbSlot {
            store: Rc::new(CountingStore::new(r2)),
            db: Mutex::new(None),
            last_used: RefCell::new(js_sys::Date::now()),
        });
        open.insert(name.to_string(), s.clone());
        s
    })
}

impl DbSlot {
    /// Waits for the database, opening it from R2 if this isolate has no copy.
    pub async fn hold(&self, name: &str) -> Result<HeldDb<'_>, EngineError> {
        let mut guard = self.db.lock().await;
        if guard.is_none() {
            let store: Rc<dyn ObjectStore> = self.store.clone();
            *guard = Some(Database::open(store, Layout::new("", name), DbConfig::default()).await?);
        }
        Ok(HeldDb { slot: self, guard })
    }
}
