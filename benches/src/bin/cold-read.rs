//! Exp 5 (native part) and commit cost: builds databases of the given sizes in the
//! in-memory object store, then measures, through the same engine the Worker runs:
//! * R2 operations per serial commit;
//! * R2 operations and bytes for opening a cold replica and answering one point query.
//!
//! `cargo run --release -p twill-benches --bin cold-read -- 1 64 256` (sizes in MiB).

use std::rc::Rc;
use std::sync::Arc;

use engine_core::cache::PageCache;
use engine_core::mem_store::MemStore;
use engine_core::store::{CountingStore, StoreCounts};
use engine_core::{Database, DbConfig, Layout, ObjectStore, SqlValue, Statement};
use futures::executor::block_on;

const ROW_BYTES: usize = 1000;
const ROWS_PER_TX: i64 = 500;

fn open(store: &Rc<CountingStore<MemStore>>) -> Database {
    let s: Rc<dyn ObjectStore> = store.clone();
    block_on(Database::open_with_cache(s, Layout::new("", "bench"), DbConfig::default(), Arc::new(PageCache::new(32 << 20))))
        .expect("open")
}

fn main() {
    let sizes: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1, 64] } else { sizes };
    println!("| database | cold open + point query: R2 reads | bytes read | serial commit: R2 writes | R2 reads |");
    println!("|---|---|---|---|---|");
    for mib in sizes {
        let store = Rc::new(CountingStore::new(Rc::new(MemStore::new())));
        let mut db = open(&store);
        block_on(db.transact(&[Statement::new("CREATE TABLE kv (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)")])).unwrap();
        let rows = (mib as i64 * (1 << 20)) / ROW_BYTES as i64;
        let mut next = 0;
        while next < rows {
            let n = ROWS_PER_TX.min(rows - next);
            let stmt = Statement::with_params(
                "INSERT INTO kv SELECT value, randomblob(?) FROM generate_series(?, ?)",
                vec![SqlValue::Integer(ROW_BYTES as i64), SqlValue::Integer(next), SqlValue::Integer(next + n - 1)],
            );
            if block_on(db.transact(&[stmt.clone()])).is_err() {
                // No generate_series in this build: a recursive CTE does the same.
                let cte = Statement::with_params(
                    "WITH RECURSIVE s(v) AS (SELECT ? UNION ALL SELECT v + 1 FROM s WHERE v < ?) INSERT INTO kv SELECT v, randomblob(?) FROM s",
                    vec![SqlValue::Integer(next), SqlValue::Integer(next + n - 1), SqlValue::Integer(ROW_BYTES as i64)],
                );
                block_on(db.transact(&[cte])).expect("insert");
            }
            next += n;
        }
        block_on(db.checkpoint()).expect("checkpoint");

        // Serial commits on the warm replica.
        let before = store.counts();
        let commits = 20;
        for i in 0..commits {
            let s = Statement::with_params("UPDATE kv SET pad = randomblob(10) WHERE id = ?", vec![SqlValue::Integer(i * 997 % rows)]);
            block_on(db.transact(&[s])).unwrap();
        }
        let serial = store.counts().since(&before);
        block_on(db.checkpoint()).expect("checkpoint");

        // A cold replica: open and one point query.
        let before: StoreCounts = store.counts();
        let mut cold = open(&store);
        let key = rows / 2 + 7;
        let r = block_on(cold.transact(&[Statement::with_params("SELECT length(pad) FROM kv WHERE id = ?", vec![SqlValue::Integer(key)])]))
            .unwrap();
        assert_eq!(r.results[0].rows.len(), 1);
        let c = store.counts().since(&before);
        println!(
            "| {mib} MiB ({rows} rows) | {} | {} | {:.2} | {:.2} |",
            c.reads,
            c.bytes_read,
            serial.writes as f64 / commits as f64,
            serial.reads as f64 / commits as f64
        );
    }
}
