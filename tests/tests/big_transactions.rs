//! Transactions that dirty more pages than turso's cache of parsed pages holds (a host with
//! many databases open gives each a small share): turso then writes dirty pages to the WAL
//! before the commit. Such a transaction still commits whole or not at all, and what
//! another replica reads is exactly what was acknowledged.

use std::rc::Rc;

use engine_core::mem_store::MemStore;
use engine_core::layout::Layout;
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

/// `WRITE_SIZE`: a request that writes more than the bound is refused with LIMIT_EXCEEDED
/// and changes nothing, whether turso hits the bound while writing dirty pages out
/// mid-transaction (a small cache) or at the commit (a cache that holds the whole write);
/// the others of its group commit; another replica reads exactly the acknowledged state.
#[test]
fn a_request_that_writes_more_than_write_size_is_refused_and_changes_nothing() {
    for parsed_pages in [128, 2000] {
        let mem = Rc::new(MemStore::new());
        let mut config = engine_core::DbConfig::default();
        config.limits.max_write_bytes = 1 << 20;
        let mut w = open_with(&mem, "bounded", config, 32 << 20);
        w.fit_parsed_pages(parsed_pages);
        exec(&mut w, "CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)", vec![]);
        // About 0.6 MiB: inside the bound.
        exec(&mut w, FILL, vec![SqlValue::Integer(1), SqlValue::Integer(500)]);

        // About 3 MiB in one statement.
        let refused = block_on(w.transact(&[Statement::with_params(FILL, vec![SqlValue::Integer(1001), SqlValue::Integer(4000)])]));
        let e = refused.expect_err("a write past WRITE_SIZE");
        assert_eq!(e.code(), "LIMIT_EXCEEDED", "{e}");
        assert!(e.to_string().contains("WRITE_SIZE"), "{e}");
        assert_eq!(query_ints(&mut w, "SELECT count(*) FROM t"), [500]);

        // One too large among small ones in a group: only it is refused.
        let small = |id: i64| vec![Statement::with_params("INSERT INTO t VALUES (?, x'01')", vec![SqlValue::Integer(id)])];
        let big = vec![
            Statement::new("UPDATE t SET pad = randomblob(1500)"),
            Statement::with_params(FILL, vec![SqlValue::Integer(5001), SqlValue::Integer(7000)]),
        ];
        let outcomes = block_on(w.transact_group(vec![small(10_001), big, small(10_002)]));
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert_eq!(outcomes[1].as_ref().expect_err("too large").code(), "LIMIT_EXCEEDED");
        assert_eq!(query_ints(&mut w, "SELECT count(*) FROM t"), [502]);
        assert_eq!(query_ints(&mut w, "SELECT count(*) FROM t WHERE length(pad) = 1000"), [500]);

        // The database goes on taking writes up to the bound.
        exec(&mut w, FILL, vec![SqlValue::Integer(20_001), SqlValue::Integer(20_500)]);
        let mut r = open(&mem, "bounded");
        assert_eq!(query_ints(&mut r, "SELECT count(*) FROM t"), [1002]);
        let check = exec(&mut r, "PRAGMA integrity_check", vec![]);
        assert_eq!(check.rows, vec![vec![SqlValue::Text("ok".into())]]);
    }
}

/// `WRITE_SIZE` bounds a commit record too: requests of one group that together write more
/// than it commit in turn, each record within the bound, and all of them are acknowledged.
#[test]
fn a_group_that_writes_more_than_write_size_commits_in_several_records() {
    let mem = Rc::new(MemStore::new());
    let mut config = engine_core::DbConfig::default();
    config.limits.max_write_bytes = 1 << 20;
    let mut w = open_with(&mem, "grouped", config, 32 << 20);
    exec(&mut w, "CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)", vec![]);
    let before = w.applied_seq();
    // About 0.7 MiB each: any two together pass the bound; a small one fits beside one.
    let fill = |from: i64| vec![Statement::with_params(FILL, vec![SqlValue::Integer(from), SqlValue::Integer(from + 699)])];
    let small = vec![Statement::new("INSERT INTO t VALUES (0, x'00')")];
    let outcomes = block_on(w.transact_group(vec![fill(1), small, fill(1001), fill(2001)]));
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(w.applied_seq() - before, 3, "records: the first fill with the small insert, then one per fill");
    for seq in before + 1..=w.applied_seq() {
        let size = mem.raw_get(&Layout::new("", "grouped").log_key(seq)).expect("the record").len();
        assert!(size <= 1 << 20, "record {seq} holds {size} bytes");
    }
    let mut r = open(&mem, "grouped");
    assert_eq!(query_ints(&mut r, "SELECT count(*) FROM t"), [2101]);
}

/// `UNFOLDED_LOG`: commits faster than checkpoints may be written (one per interval) hold
/// their log in memory; once it passes the bound, the commit that passed it folds it.
#[test]
fn a_log_past_the_unfolded_bound_is_folded_by_the_commit_that_passed_it() {
    let mem = Rc::new(MemStore::new());
    let mut config = engine_core::DbConfig::default();
    config.checkpoint_min_interval_ms = 3_600_000.0;
    config.max_unfolded_log_bytes = 2 << 20;
    let mut w = open_with(&mem, "unfolded", config, 32 << 20);
    exec(&mut w, "CREATE TABLE t (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)", vec![]);
    let mut folds = Vec::new();
    for i in 0..7i64 {
        let before = w.checkpoint_seq();
        exec(&mut w, FILL, vec![SqlValue::Integer(i * 1000 + 1), SqlValue::Integer(i * 1000 + 600)]);
        if w.checkpoint_seq() > before {
            assert_eq!(w.checkpoint_seq(), w.applied_seq(), "the fold covers the commit that called for it");
            folds.push(i);
        }
    }
    // About 0.6 MiB per commit. The first checkpoint of a database is not paced (commit 1,
    // past 1 MiB); then the interval never passes, and commit 5 takes the log past 2 MiB.
    assert_eq!(folds, [1, 5]);
    let mut r = open(&mem, "unfolded");
    assert_eq!(query_ints(&mut r, "SELECT count(*) FROM t"), [4200]);
}
