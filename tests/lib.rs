//! Helpers shared by the native integration and simulation tests.

pub mod gate;

use std::rc::Rc;
use std::sync::Arc;

use engine_core::cache::PageCache;
use engine_core::mem_store::MemStore;
use engine_core::{Database, DbConfig, DbContext, Layout, ObjectStore, SqlValue, Statement, StatementResult};

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

pub fn open(store: &Rc<MemStore>, name: &str) -> Database {
    open_with(store, name, DbConfig::default(), 32 << 20)
}

pub fn open_with(store: &Rc<MemStore>, name: &str, config: DbConfig, cache_bytes: usize) -> Database {
    try_open(store, name, config, cache_bytes).expect("open")
}

pub fn try_open(
    store: &Rc<MemStore>,
    name: &str,
    config: DbConfig,
    cache_bytes: usize,
) -> Result<Database, engine_core::EngineError> {
    let store: Rc<dyn ObjectStore> = store.clone();
    let ctx = DbContext::new(store).with_cache(Arc::new(PageCache::new(cache_bytes)));
    block_on(Database::open(ctx, Layout::new("", name), config))
}

/// [`try_open`] with a given context (a simulated host, a shared cache).
pub fn try_open_in(ctx: DbContext, name: &str, config: DbConfig) -> Result<Database, engine_core::EngineError> {
    block_on(Database::open(ctx, Layout::new("", name), config))
}

/// Runs one statement as its own transaction.
pub fn exec(db: &mut Database, sql: &str, params: Vec<SqlValue>) -> StatementResult {
    let mut r = block_on(db.transact(&[Statement::with_params(sql, params)])).unwrap_or_else(|e| panic!("{sql}: {e}"));
    r.results.remove(0)
}

pub fn query_ints(db: &mut Database, sql: &str) -> Vec<i64> {
    exec(db, sql, vec![])
        .rows
        .into_iter()
        .map(|r| match r[0] {
            SqlValue::Integer(i) => i,
            ref other => panic!("expected integer, got {other:?}"),
        })
        .collect()
}

/// One simulated deployment: an in-memory bucket and a seeded host clock shared by every
/// isolate (each [`World::open`] is one).
pub struct World {
    pub store: Rc<MemStore>,
    pub host: Arc<engine_core::dst::SimHost>,
}

impl World {
    pub fn new(seed: u64) -> Self {
        World { store: Rc::new(MemStore::new()), host: Arc::new(engine_core::dst::SimHost::new(seed)) }
    }

    /// Database `name` as a new isolate sees it.
    pub fn open(&self, name: &str, config: DbConfig) -> Database {
        let ctx = DbContext::new(self.store.clone()).with_host(self.host.clone()).with_sleeper(engine_core::dst::sleeper(&self.host));
        try_open_in(ctx, name, config).expect("open")
    }

    /// The keys of database `name` under `under` (e.g. "upload/").
    pub fn keys(&self, name: &str, under: &str) -> Vec<String> {
        self.store.keys().into_iter().filter(|k| k.starts_with(&format!("db/{name}/{under}"))).collect()
    }
}
