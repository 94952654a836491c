//! Upload sessions: a file imported in parts (each its own request), in any order, resumable,
//! published as one commit; parts sent twice, sessions that expire, aborts and the sweep.

use std::cell::Cell;
use std::rc::Rc;

use engine_core::mem_store::{Fault, FaultInjector, OpKind};
use engine_core::{DbConfig, EngineError};
use twill_tests::{block_on, exec, query_ints, World};

const HOUR: f64 = 3_600_000.0;
const PART: u64 = 512 << 10;

fn config() -> DbConfig {
    DbConfig {
        checkpoint_records: 3,
        gc_retention_ms: 0.0,
        history_retention_ms: 0.0,
        orphan_sweep_interval_ms: 0.0,
        ..DbConfig::default()
    }
}

fn body(bytes: &[u8]) -> impl futures::Stream<Item = Result<Vec<u8>, EngineError>> + Unpin {
    futures::stream::iter(bytes.chunks(100_000).map(|c| Ok(c.to_vec())).collect::<Vec<_>>())
}

/// A SQLite file of about 3 MiB made by C SQLite.
fn sqlite_file(tag: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("twill-upload-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.db");
    let _ = std::fs::remove_file(&path);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, pad BLOB); CREATE INDEX t_v ON t (v);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000)
             INSERT INTO t (v, pad) SELECT 'row' || i, randomblob(400) FROM n;",
        )
        .unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    bytes
}

/// Counts the GETs of upload part records (and injects no fault).
struct CountPartRecordGets(Rc<Cell<usize>>);

impl FaultInjector for CountPartRecordGets {
    fn decide(&mut self, op: OpKind, key: &str) -> Fault {
        if op == OpKind::Get && key.contains("/parts/") {
            self.0.set(self.0.get() + 1);
        }
        Fault::None
    }
}

fn parts(file: &[u8]) -> Vec<&[u8]> {
    file.chunks(PART as usize).collect()
}

#[test]
fn a_file_in_parts_in_any_order_is_one_commit() {
    let world = World::new(51);
    let file = sqlite_file("order");
    let parts = parts(&file);
    assert!(parts.len() >= 5, "{} parts", parts.len());
    let mut db = world.open("big", config());
    let session = block_on(db.begin_upload(Some(PART), false)).unwrap();
    assert_eq!(session.part_bytes, PART);

    // Last part first, the rest backwards; part 1 twice (a retry after a lost answer).
    for (i, part) in parts.iter().enumerate().rev() {
        // Any isolate may take any part.
        let mut other = world.open("big", config());
        let stored = block_on(other.upload_part(&session.id, i as u32, body(part))).unwrap();
        assert_eq!((stored.part, stored.bytes, stored.already_stored), (i as u32, part.len() as u64, false));
    }
    let again = block_on(db.upload_part(&session.id, 1, body(parts[1]))).unwrap();
    assert!(again.already_stored, "the same bytes again are already stored");
    let mut changed = parts[1].to_vec();
    changed[5000] ^= 1;
    let e = block_on(db.upload_part(&session.id, 1, body(&changed))).unwrap_err();
    assert_eq!(e.code(), "UPLOAD_CONFLICT", "{e}");
    assert_eq!(db.applied_seq(), 0, "nothing is visible before the session completes");

    let status = block_on(db.upload_status(&session.id)).unwrap();
    assert_eq!(status.parts.len(), parts.len());
    assert_eq!(status.parts.iter().map(|(_, b)| b).sum::<u64>(), file.len() as u64);

    // A Worker invocation has a call budget: completing reads each part's record once.
    let record_gets = Rc::new(Cell::new(0));
    world.store.set_faults(Some(Box::new(CountPartRecordGets(record_gets.clone()))));
    let imported = block_on(db.complete_upload(&session.id, parts.len() as u32)).unwrap();
    world.store.set_faults(None);
    assert_eq!((imported.bytes, imported.bookmark.0), (file.len() as u64, 1));
    assert_eq!(record_gets.get(), parts.len(), "part records read to complete {} parts", parts.len());
    let mut reader = world.open("big", config());
    assert_eq!(query_ints(&mut reader, "SELECT count(*) FROM t"), vec![6000]);
    assert_eq!(query_ints(&mut reader, "SELECT sum(length(pad)) FROM t"), vec![2_400_000]);
    assert_eq!(query_ints(&mut reader, "SELECT id FROM t WHERE v = 'row4321'"), vec![4321], "the index came along");
    assert!(world.keys("big", "sessions/").is_empty(), "the session ended");
    assert!(world.keys("big", "upload/").iter().all(|k| !k.contains("/parts/")), "its part records went");
    let e = block_on(db.complete_upload(&session.id, parts.len() as u32)).unwrap_err();
    assert_eq!(e.code(), "UPLOAD_NOT_FOUND", "{e}");

    // Writes and checkpoints go on over the imported chunks.
    for i in 0..5 {
        exec(&mut reader, "UPDATE t SET v = ? WHERE id = 1", vec![engine_core::SqlValue::Integer(i)]);
    }
    let mut fresh = world.open("big", config());
    assert_eq!(query_ints(&mut fresh, "SELECT count(*) FROM t"), vec![6000]);
}

#[test]
fn sessions_refuse_what_they_cannot_publish() {
    let world = World::new(52);
    let file = sqlite_file("refuse");
    let parts = parts(&file);
    let mut db = world.open("r", config());
    for bad in [0, 1000, 200 << 20] {
        assert_eq!(block_on(db.begin_upload(Some(bad), false)).unwrap_err().code(), "LIMIT_EXCEEDED", "part_bytes {bad}");
    }
    for id in ["../../manifest", "0001700000000000-XYZ", ""] {
        assert_eq!(block_on(db.upload_status(id)).unwrap_err().code(), "UPLOAD_NOT_FOUND", "{id:?}");
    }

    let session = block_on(db.begin_upload(Some(PART), false)).unwrap();
    // A part longer than the session's parts: refused, nothing of it left.
    let before = world.keys("r", "upload/").len();
    let long = [parts[1], &parts[2][..10]].concat();
    assert_eq!(block_on(db.upload_part(&session.id, 1, body(&long))).unwrap_err().code(), "LIMIT_EXCEEDED");
    assert_eq!(world.keys("r", "upload/").len(), before);
    // Part 0 must begin a SQLite file.
    assert_eq!(block_on(db.upload_part(&session.id, 0, body(b"not sqlite"))).unwrap_err().code(), "INVALID_DATABASE_FILE");
    // Completing with a part missing names it.
    block_on(db.upload_part(&session.id, 0, body(parts[0]))).unwrap();
    block_on(db.upload_part(&session.id, 2, body(parts[2]))).unwrap();
    let e = block_on(db.complete_upload(&session.id, parts.len() as u32)).unwrap_err();
    assert!(e.code() == "UPLOAD_CONFLICT" && e.to_string().contains("part 1"), "{e}");
    // Parts past the count the completion names are refused.
    let e = block_on(db.complete_upload(&session.id, 2)).unwrap_err();
    assert!(e.code() == "UPLOAD_CONFLICT" && e.to_string().contains("holds part 2, past the 2 parts"), "{e}");
    // A short part that is not the last cannot make a file.
    block_on(db.upload_part(&session.id, 1, body(&parts[1][..4096]))).unwrap();
    let e = block_on(db.complete_upload(&session.id, 3)).unwrap_err();
    assert!(e.code() == "UPLOAD_CONFLICT" && e.to_string().contains("part 1 holds 4096"), "{e}");
    // Aborting deletes everything it stored.
    block_on(db.abort_upload(&session.id)).unwrap();
    assert!(world.keys("r", "upload/").is_empty() && world.keys("r", "sessions/").is_empty());
    assert_eq!(block_on(db.upload_part(&session.id, 3, body(parts[3]))).unwrap_err().code(), "UPLOAD_NOT_FOUND");

    // A file whose end never came: its header says so, and the upload is deleted.
    let session = block_on(db.begin_upload(Some(PART), false)).unwrap();
    for (i, part) in parts.iter().enumerate().take(2) {
        block_on(db.upload_part(&session.id, i as u32, body(part))).unwrap();
    }
    let e = block_on(db.complete_upload(&session.id, 2)).unwrap_err();
    assert!(e.code() == "INVALID_DATABASE_FILE" && e.to_string().contains("cut short"), "{e}");
    assert!(world.keys("r", "upload/").is_empty() && world.keys("r", "sessions/").is_empty());

    // A damaged file fails its check at completion; its upload is deleted.
    let session = block_on(db.begin_upload(Some(PART), false)).unwrap();
    for (i, part) in parts.iter().enumerate() {
        let mut part = part.to_vec();
        if i == 1 {
            part[..4096].fill(0xAB);
        }
        block_on(db.upload_part(&session.id, i as u32, body(&part))).unwrap();
    }
    let e = block_on(db.complete_upload(&session.id, parts.len() as u32)).unwrap_err();
    assert_eq!(e.code(), "INVALID_DATABASE_FILE", "{e}");
    assert_eq!(db.applied_seq(), 0);
    assert!(world.keys("r", "upload/").is_empty() && world.keys("r", "sessions/").is_empty());

    // Into a database with tables: refused unless the session replaces it.
    exec(&mut db, "CREATE TABLE keep (x)", vec![]);
    assert_eq!(block_on(db.begin_upload(None, false)).unwrap_err().code(), "DATABASE_NOT_EMPTY");
    let session = block_on(db.begin_upload(Some(PART), true)).unwrap();
    for (i, part) in parts.iter().enumerate() {
        block_on(db.upload_part(&session.id, i as u32, body(part))).unwrap();
    }
    let replaced = block_on(db.complete_upload(&session.id, parts.len() as u32)).unwrap();
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM sqlite_schema WHERE name = 'keep'"), vec![0]);
    block_on(db.restore(replaced.previous.0)).unwrap();
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM sqlite_schema WHERE name = 'keep'"), vec![1]);
}

#[test]
fn sessions_expire_and_the_sweep_takes_what_they_left() {
    let world = World::new(53);
    let file = sqlite_file("expire");
    let parts = parts(&file);
    let mut db = world.open("x", config());
    exec(&mut db, "CREATE TABLE t (x)", vec![]);
    let session = block_on(db.begin_upload(Some(PART), true)).unwrap();
    block_on(db.upload_part(&session.id, 0, body(parts[0]))).unwrap();
    block_on(db.upload_part(&session.id, 1, body(parts[1]))).unwrap();
    // A session being completed elsewhere is never swept; this one is left open.
    world.host.advance(25.0 * HOUR);
    assert_eq!(block_on(db.upload_part(&session.id, 2, body(parts[2]))).unwrap_err().code(), "UPLOAD_EXPIRED");
    assert_eq!(block_on(db.complete_upload(&session.id, parts.len() as u32)).unwrap_err().code(), "UPLOAD_EXPIRED");
    assert!(!world.keys("x", "upload/").is_empty(), "not swept before its lifetime and an hour have passed");
    world.host.advance(2.0 * HOUR);
    for i in 0..4 {
        exec(&mut db, "INSERT INTO t VALUES (?)", vec![engine_core::SqlValue::Integer(i)]);
    }
    assert!(world.keys("x", "upload/").is_empty(), "swept at a checkpoint: {:?}", world.keys("x", "upload/"));
    assert!(world.keys("x", "sessions/").is_empty());
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM t"), vec![4]);
}

#[test]
fn a_warm_replica_sees_an_upload_completed_elsewhere() {
    let world = World::new(54);
    let file = sqlite_file("warm");
    let parts = parts(&file);
    let mut writer = world.open("w", config());
    let mut replica = world.open("w", config());
    assert_eq!(query_ints(&mut replica, "SELECT count(*) FROM sqlite_schema"), vec![0]);
    let session = block_on(writer.begin_upload(Some(PART), false)).unwrap();
    for (i, part) in parts.iter().enumerate() {
        block_on(replica.upload_part(&session.id, i as u32, body(part))).unwrap();
    }
    block_on(writer.complete_upload(&session.id, parts.len() as u32)).unwrap();
    assert_eq!(query_ints(&mut replica, "SELECT count(*) FROM t"), vec![6000]);
}

