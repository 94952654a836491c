//! History: the commit at a time, reading the state after any commit in the window,
//! restoring it in place (and undoing that), and the window's edges under GC.

use std::rc::Rc;
use std::sync::Arc;

use engine_core::dst::SimHost;
use engine_core::mem_store::MemStore;
use engine_core::{Bookmark, Database, DbConfig, DbContext, EngineError, SqlValue};
use twill_tests::{block_on, exec, query_ints, try_open_in};

const MINUTE: f64 = 60_000.0;
const HOUR: f64 = 60.0 * MINUTE;

fn config(history_ms: f64) -> DbConfig {
    DbConfig { checkpoint_records: 3, gc_retention_ms: 0.0, history_retention_ms: history_ms, ..DbConfig::default() }
}

fn open(store: &Rc<MemStore>, host: &Arc<SimHost>, history_ms: f64) -> Database {
    let ctx = DbContext::new(store.clone()).with_host(host.clone()).with_sleeper(engine_core::dst::sleeper(host));
    try_open_in(ctx, "h", config(history_ms)).expect("open")
}

fn count(db: &mut Database) -> i64 {
    query_ints(db, "SELECT count(*) FROM t")[0]
}

/// Inserts rows one commit each, a minute apart; returns (bookmark, time) after each.
fn insert_rows(db: &mut Database, host: &SimHost, n: usize) -> Vec<(u64, u64)> {
    (0..n)
        .map(|i| {
            host.advance(MINUTE);
            exec(db, "INSERT INTO t (v) VALUES (?)", vec![SqlValue::Integer(i as i64)]);
            (db.applied_seq(), host.peek_ms() as u64)
        })
        .collect()
}

#[test]
fn every_commit_in_the_window_can_be_found_by_time_and_read() {
    let store = Rc::new(MemStore::new());
    let host = Arc::new(SimHost::new(7));
    let mut db = open(&store, &host, 24.0 * HOUR);
    exec(&mut db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)", vec![]);
    let commits = insert_rows(&mut db, &host, 20);
    assert!(db.checkpoint_seq() >= 15, "several checkpoints passed: {}", db.checkpoint_seq());

    // Another isolate, cold, answers for every commit: by time, then by bookmark.
    let mut other = open(&store, &host, 24.0 * HOUR);
    for (i, (seq, at)) in commits.iter().enumerate() {
        assert_eq!(block_on(other.commit_at(*at)).unwrap(), Bookmark(*seq), "commit at its own time");
        assert_eq!(block_on(other.commit_at(at + 30_000)).unwrap(), Bookmark(*seq), "half a minute later");
        let mut past = block_on(other.past(*seq)).unwrap();
        assert_eq!(count(&mut past), i as i64 + 1, "the state after commit {seq}");
        assert_eq!(past.applied_seq(), *seq);
    }
    // Before the first row: the CREATE TABLE alone.
    let first_at = commits[0].1;
    assert_eq!(block_on(other.commit_at(first_at - 30_000)).unwrap(), Bookmark(1));
    let mut empty = block_on(other.past(1)).unwrap();
    assert_eq!(count(&mut empty), 0);
    let mut nothing = block_on(other.past(0)).unwrap();
    assert!(exec_err(&mut nothing, "SELECT count(*) FROM t").to_string().contains("no such table"));

    // The past is read-only, and reading it changed nothing.
    let mut past = block_on(other.past(5)).unwrap();
    let e = exec_err(&mut past, "INSERT INTO t (v) VALUES (1)");
    assert_eq!(e.code(), "STATEMENT_NOT_ALLOWED", "{e}");
    assert_eq!(count(&mut db), 20);

    // A bookmark after the newest commit names nothing.
    let head = db.applied_seq();
    assert_eq!(block_on(other.past(head + 1)).err().unwrap().code(), "INVALID_BOOKMARK");
}

fn exec_err(db: &mut Database, sql: &str) -> EngineError {
    block_on(db.transact(&[engine_core::Statement::new(sql)])).unwrap_err()
}

#[test]
fn restore_makes_the_past_current_as_a_new_commit_and_can_be_undone() {
    let store = Rc::new(MemStore::new());
    let host = Arc::new(SimHost::new(8));
    let mut db = open(&store, &host, 24.0 * HOUR);
    exec(&mut db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)", vec![]);
    let commits = insert_rows(&mut db, &host, 12);
    host.advance(MINUTE);
    exec(&mut db, "DROP TABLE t", vec![]);
    let dropped = db.applied_seq();

    // Restore to the state after the 8th row, from a replica that never saw it.
    let mut other = open(&store, &host, 24.0 * HOUR);
    let restored = block_on(other.restore(commits[7].0)).unwrap();
    assert_eq!(restored.previous, Bookmark(dropped));
    assert_eq!(restored.bookmark, Bookmark(dropped + 1));
    assert_eq!(count(&mut other), 8);

    // The first replica sees it and keeps writing on it; checkpoints fold it.
    assert_eq!(count(&mut db), 8);
    host.advance(MINUTE);
    exec(&mut db, "INSERT INTO t (v) VALUES (100)", vec![]);
    for _ in 0..4 {
        exec(&mut db, "INSERT INTO t (v) VALUES (101)", vec![]);
    }
    assert!(db.checkpoint_seq() > restored.bookmark.0, "a checkpoint folded the restore");
    assert_eq!(count(&mut other), 13);

    // Undo the restore: back to the dropped table.
    let undo = block_on(db.restore(restored.previous.0)).unwrap();
    assert!(exec_err(&mut db, "SELECT count(*) FROM t").to_string().contains("no such table"));
    // And the restored state itself is still history.
    let mut again = block_on(other.past(undo.previous.0)).unwrap();
    assert_eq!(count(&mut again), 13);
    let mut fresh = open(&store, &host, 24.0 * HOUR);
    assert!(exec_err(&mut fresh, "SELECT count(*) FROM t").to_string().contains("no such table"));
}

#[test]
fn the_window_ends_where_gc_took_the_past_and_is_refused_near_its_edge() {
    let store = Rc::new(MemStore::new());
    let host = Arc::new(SimHost::new(9));
    let window = 2.0 * HOUR;
    let mut db = open(&store, &host, window);
    exec(&mut db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)", vec![]);
    let early = insert_rows(&mut db, &host, 9);
    let objects_early = store.keys().len();
    // Inside the window and far from its edge: served.
    let mut past = block_on(db.past(early[2].0)).unwrap();
    assert_eq!(count(&mut past), 3);

    // 100 minutes later the first rows are within 30 minutes (a quarter of the window) of
    // its edge: refused, though not yet collected.
    host.advance(100.0 * MINUTE);
    let e = block_on(db.past(early[2].0)).err().unwrap();
    assert_eq!(e.code(), "HISTORY_UNAVAILABLE", "{e}");

    // Past the window, checkpoints collect the old generations.
    host.advance(HOUR);
    let later = insert_rows(&mut db, &host, 12);
    let e = block_on(db.past(early[2].0)).err().unwrap();
    assert_eq!(e.code(), "HISTORY_UNAVAILABLE", "{e}");
    let window_now = block_on(db.history_window()).unwrap();
    assert!(window_now.from.0 > early[2].0, "history starts later now: {window_now:?}");
    assert!(store.keys().len() < objects_early + 30, "old objects were collected: {} keys", store.keys().len());
    let mut recent = block_on(db.past(later[5].0)).unwrap();
    assert_eq!(count(&mut recent), 9 + 6);
    let e = block_on(db.commit_at(early[0].1)).err().unwrap();
    assert_eq!(e.code(), "HISTORY_UNAVAILABLE", "{e}");
}

#[test]
fn without_history_only_the_newest_checkpoint_and_its_log_are_readable() {
    let store = Rc::new(MemStore::new());
    let host = Arc::new(SimHost::new(10));
    let mut db = open(&store, &host, 0.0);
    exec(&mut db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)", vec![]);
    let commits = insert_rows(&mut db, &host, 10);
    let head = db.applied_seq();
    let mut now = block_on(db.past(head)).unwrap();
    assert_eq!(count(&mut now), 10);
    let e = block_on(db.past(commits[1].0)).err().unwrap();
    assert_eq!(e.code(), "HISTORY_UNAVAILABLE", "{e}");
}

#[test]
fn forks_start_from_any_commit_share_chunks_and_outlive_the_parents_gc() {
    let store = Rc::new(MemStore::new());
    let host = Arc::new(SimHost::new(11));
    let window = 2.0 * HOUR;
    let mut parent = open(&store, &host, window);
    exec(&mut parent, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER, pad BLOB)", vec![]);
    exec(
        &mut parent,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) INSERT INTO t (v, pad) SELECT i, randomblob(2000) FROM n",
        vec![],
    );
    let commits = insert_rows(&mut parent, &host, 8);
    let keys_before = store.keys().len();

    // A fork of the state after the 3rd single row: a few small writes.
    let forked = block_on(parent.fork(commits[2].0, "child")).unwrap();
    assert_eq!(forked.bookmark, Bookmark(1));
    let written = store.keys().len() - keys_before;
    assert!(written <= 3, "a fork is a record and a reference, not a copy: {written} objects");
    let parent_chunks: Vec<String> = store.keys().into_iter().filter(|k| k.starts_with("db/h/chunk/")).collect();
    let ctx = |h: &Arc<SimHost>| DbContext::new(store.clone()).with_host(h.clone()).with_sleeper(engine_core::dst::sleeper(h));
    let mut child = try_open_in(ctx(&host), "child", config(window)).unwrap();
    assert_eq!(count(&mut child), 303);

    // Writes on either side are invisible to the other.
    exec(&mut child, "DELETE FROM t WHERE v > 100", vec![]);
    exec(&mut parent, "INSERT INTO t (v) VALUES (-1)", vec![]);
    assert_eq!(count(&mut child), 103);
    assert_eq!(count(&mut parent), 309);

    // A fork of the fork, and forking onto an existing name is refused.
    let grandchild = block_on(child.fork(child.applied_seq(), "grandchild")).unwrap();
    assert_eq!(grandchild.from, Bookmark(child.applied_seq()));
    let e = block_on(parent.fork(parent.applied_seq(), "child")).unwrap_err();
    assert_eq!(e.code(), "DATABASE_EXISTS", "{e}");

    // The parent rewrites every row and its GC runs far past the window: the forks still
    // read their chunks.
    exec(&mut parent, "UPDATE t SET pad = randomblob(2000)", vec![]);
    host.advance(3.0 * window);
    for _ in 0..12 {
        exec(&mut parent, "UPDATE t SET v = v + 1 WHERE id = 1", vec![]);
        host.advance(MINUTE);
    }
    assert!(block_on(parent.past(commits[2].0)).is_err(), "the parent's own history moved on");
    let gone = parent_chunks.iter().filter(|k| store.raw_get(k).is_none()).count();
    assert!(gone > 0, "the parent's GC deleted chunks no fork uses");
    let mut cold_child = try_open_in(ctx(&host), "child", config(window)).unwrap();
    assert_eq!(count(&mut cold_child), 103);
    assert_eq!(query_ints(&mut cold_child, "SELECT sum(length(pad)) FROM t WHERE id <= 100")[0], 200_000);
    let mut cold_grandchild = try_open_in(ctx(&host), "grandchild", config(window)).unwrap();
    assert_eq!(count(&mut cold_grandchild), 103);
    exec(&mut cold_grandchild, "INSERT INTO t (v) VALUES (7)", vec![]);
    assert_eq!(count(&mut cold_child), 103);
}
