//! Transactions that dirty more pages than turso's cache of parsed pages holds (a host with
//! many databases open gives each a small share): turso then writes dirty pages to the WAL
//! before the commit. Such a transaction still commits whole or not at all, and what
//! another replica reads is exactly what was acknowledged.

use std::rc::Rc;

use engine_core::mem_store::MemStore;
use engine_core::{SqlValue, Statement};
use twill_tests::*;

/// Rows of 1,000 bytes: 128 pages of cache hold about 500 of them.
const FILL: &str =
    "WITH RECURSIVE s(v) AS (SELECT ?1 UNION ALL SELECT v + 1 FROM s WHERE v < ?2) INSERT INTO t SELECT v, randomblob(1000) FROM s";

#[test]
fn transactions_larger_than_the_parsed_page_cache_commit_whole_or_not_at_all() {
    let mem = Rc::new(MemStore::new());
    let mut w = open(&mem, "big");
    w.fit_parsed_pages(128);
    assert_eq!(w.parsed_pages(), Some(128));
    exec(&mut w, "CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)", vec![]);
    exec(&mut w, "INSERT INTO t VALUES (0, x'00')", vec![]);
    // About 3 MiB in one transaction: six times what the cache holds.
    exec(&mut w, FILL, vec![SqlValue::Integer(1), SqlValue::Integer(3000)]);
    assert_eq!(query_ints(&mut w, "SELECT count(*) FROM t"), [3001]);

    // As large, failing at its end (a duplicate key): nothing of it stays.
    let failed = block_on(w.transact(&[
        Statement::with_params(FILL, vec![SqlValue::Integer(5001), SqlValue::Integer(8000)]),
        Statement::new("INSERT INTO t VALUES (1, x'01')"),
    ]));
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(query_ints(&mut w, "SELECT count(*) FROM t"), [3001]);
    // Rewriting every row, then failing: every page was dirty.
    let failed = block_on(w.transact(&[
        Statement::new("UPDATE t SET pad = randomblob(1200)"),
        Statement::new("INSERT INTO t VALUES (1, x'01')"),
    ]));
    assert!(failed.is_err());
    assert_eq!(query_ints(&mut w, "SELECT count(*) FROM t WHERE length(pad) = 1000"), [3000]);
    exec(&mut w, "UPDATE t SET pad = randomblob(1100) WHERE id > 0", vec![]);

    // Another replica, and the writer after a checkpoint, read exactly the acknowledged state.
    let mut r = open(&mem, "big");
    assert_eq!(query_ints(&mut r, "SELECT count(*) FROM t WHERE length(pad) = 1100"), [3000]);
    assert_eq!(query_ints(&mut r, "SELECT count(*) FROM t"), [3001]);
    let check = exec(&mut r, "PRAGMA integrity_check", vec![]);
    assert_eq!(check.rows, vec![vec![SqlValue::Text("ok".into())]]);
    assert!(block_on(w.checkpoint()).unwrap());
    let mut after = open(&mem, "big");
    assert_eq!(query_ints(&mut after, "SELECT count(*) FROM t WHERE length(pad) = 1100"), [3000]);
}
