//! Helpers shared by the native integration and simulation tests.

use std::rc::Rc;

use engine_core::mem_store::MemStore;
use engine_core::{Database, DbConfig, Layout, ObjectStore, SqlValue, Statement, StatementResult};

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

pub fn open(store: &Rc<MemStore>, name: &str) -> Database {
    let store: Rc<dyn ObjectStore> = store.clone();
    block_on(Database::open(store, Layout::new("", name), DbConfig::default())).expect("open")
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
