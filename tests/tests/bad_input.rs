//! What the engine does with objects it did not write (or that were damaged): corrupt or
//! truncated log records and chunks, a manifest that does not parse, objects of a newer
//! format version. Each gets a clear error with a code, never a panic (in the Worker a panic
//! kills the isolate), and the database stays readable where its data is intact.

use std::rc::Rc;

use engine_core::mem_store::MemStore;
use engine_core::{DbConfig, EngineError, Statement};
use twill_tests::{block_on, exec, open_with, query_ints, try_open};

fn small_checkpoints() -> DbConfig {
    DbConfig { checkpoint_records: 1_000, ..DbConfig::default() }
}

/// A database with two tables in separate chunks after a checkpoint, and two log records
/// after the checkpoint.
fn setup(store: &Rc<MemStore>, name: &str) {
    let mut db = open_with(store, name, small_checkpoints(), 32 << 20);
    exec(&mut db, "CREATE TABLE a (id INTEGER PRIMARY KEY, pad BLOB)", vec![]);
    exec(&mut db, "CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT)", vec![]);
    // Table a fills the first chunks; b's pages come after.
    block_on(db.transact(&[Statement::new(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1200) INSERT INTO a SELECT i, randomblob(900) FROM s",
    )]))
    .unwrap();
    exec(&mut db, "INSERT INTO b VALUES (1, 'kept')", vec![]);
    assert!(block_on(db.checkpoint()).unwrap());
    exec(&mut db, "INSERT INTO b VALUES (2, 'after checkpoint')", vec![]);
    exec(&mut db, "INSERT INTO b VALUES (3, 'latest')", vec![]);
}

fn keys(store: &MemStore, part: &str) -> Vec<String> {
    store.keys().into_iter().filter(|k| k.contains(part)).collect()
}

fn open_error(store: &Rc<MemStore>, name: &str) -> Option<EngineError> {
    match try_open(store, name, small_checkpoints(), 32 << 20) {
        Ok(mut db) => block_on(db.transact(&[Statement::new("SELECT count(*) FROM b")])).err(),
        Err(e) => Some(e),
    }
}

#[test]
fn a_corrupt_or_truncated_log_record_is_a_clear_error_and_the_good_copy_still_reads() {
    for damage in ["flip", "truncate", "newer-version", "empty", "foreign"] {
        let store = Rc::new(MemStore::new());
        setup(&store, "lr");
        let last = keys(&store, "/log/").pop().unwrap();
        let good = store.raw_get(&last).unwrap();
        let mut bad = good.clone();
        match damage {
            "flip" => bad[60] ^= 0x40,
            "truncate" => bad.truncate(bad.len() / 2),
            "newer-version" => bad[4] = 9,
            "empty" => bad.clear(),
            _ => bad = b"not a log record at all".to_vec(),
        }
        store.raw_put(&last, bad);
        let e = open_error(&store, "lr").unwrap_or_else(|| panic!("{damage}: a damaged record must not read as data"));
        assert_eq!(e.code(), "CORRUPT_STATE", "{damage}: {e}");
        if damage == "newer-version" {
            assert!(e.to_string().contains("newer"), "{e}");
        }
        // Put it back: the database reads again, nothing else was changed.
        store.raw_put(&last, good);
        let mut db = open_with(&store, "lr", small_checkpoints(), 32 << 20);
        assert_eq!(query_ints(&mut db, "SELECT count(*) FROM b"), [3], "{damage}");
    }
}

#[test]
fn a_manifest_that_does_not_parse_or_is_newer_is_a_clear_error() {
    for (damage, bytes, expect) in [
        ("garbage", b"{not json".to_vec(), "does not parse"),
        ("newer", br#"{"version":99,"generation":5,"checkpoint_seq":1,"page_size":4096,"page_count":1,"pages_per_chunk":64,"chunks":["x"]}"#.to_vec(), "version 99"),
        ("inconsistent", br#"{"version":1,"generation":5,"checkpoint_seq":1,"page_size":4096,"page_count":200,"pages_per_chunk":64,"chunks":["x"]}"#.to_vec(), "chunks"),
    ] {
        let store = Rc::new(MemStore::new());
        setup(&store, "m");
        let good = store.raw_get("db/m/manifest").unwrap();
        store.raw_put("db/m/manifest", bytes);
        let e = open_error(&store, "m").expect("a broken manifest must not open");
        assert_eq!(e.code(), "CORRUPT_STATE", "{damage}: {e}");
        assert!(e.to_string().contains(expect), "{damage}: {e}");
        store.raw_put("db/m/manifest", good);
        assert!(open_error(&store, "m").is_none(), "{damage}: readable again");
    }
}

#[test]
fn a_truncated_or_missing_chunk_fails_only_the_queries_that_need_it() {
    let store = Rc::new(MemStore::new());
    setup(&store, "c");
    let chunks = keys(&store, "/chunk/");
    assert!(chunks.len() >= 4, "{chunks:?}");
    // Truncate a chunk in the middle of table a: queries of b still answer.
    let victim = &chunks[2];
    let good = store.raw_get(victim).unwrap();
    store.raw_put(victim, good[..4096].to_vec());
    let mut db = open_with(&store, "c", small_checkpoints(), 32 << 20);
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM b"), [3], "b is intact and readable");
    let e = block_on(db.transact(&[Statement::new("SELECT sum(length(pad)) FROM a")])).unwrap_err();
    assert_eq!(e.code(), "CORRUPT_STATE", "{e}");
    assert!(e.to_string().contains("answered"), "{e}");
    // Writes that do not touch the damaged pages go on too.
    exec(&mut db, "INSERT INTO b VALUES (4, 'still writable')", vec![]);
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM b"), [4]);
}

#[test]
fn altered_chunk_bytes_are_a_clear_error_and_other_tables_still_read() {
    let store = Rc::new(MemStore::new());
    setup(&store, "x");
    let chunks = keys(&store, "/chunk/");
    let victim = &chunks[2];
    let mut bytes = store.raw_get(victim).unwrap();
    let mut rng = engine_core::mem_store::SplitMix64(5);
    for b in bytes.iter_mut() {
        *b = rng.next_u64() as u8;
    }
    store.raw_put(victim, bytes);
    let mut db = open_with(&store, "x", small_checkpoints(), 32 << 20);
    let e = block_on(db.transact(&[Statement::new("SELECT sum(length(pad)) FROM a")])).unwrap_err();
    assert_eq!(e.code(), "CORRUPT_STATE", "{e}");
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM b"), [3], "b is intact and readable");
}
