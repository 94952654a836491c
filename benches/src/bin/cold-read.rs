//! Exp 5 (native part): builds databases of the given sizes in the in-memory object store
//! and counts, through the same engine the Worker runs, the object-store calls and bytes of
//! a cold replica's first point query (open + query). Also R2 writes per serial commit.
//!
//! `cargo run --release -p twill-benches --bin cold-read -- 1 64 256` (sizes in MiB).
//! `TWILL_BENCH_TRACE=1` prints every store call of the cold query.

use std::rc::Rc;
use std::sync::Arc;

use engine_core::cache::PageCache;
use engine_core::mem_store::MemStore;
use engine_core::store::{CountingStore, StoreCounts};
use engine_core::{Database, DbConfig, DbContext, Layout, ObjectStore, SqlValue, Statement};
use futures::executor::block_on;
use twill_benches::{Latency, SimStore};

const ROW_BYTES: i64 = 1000;
const ROWS_PER_TX: i64 = 2000;

type Store = CountingStore<SimStore<MemStore>>;

fn open(store: &Rc<Store>) -> Database {
    let s: Rc<dyn ObjectStore> = store.clone();
    block_on(Database::open_for_waiting_requests(DbContext::new(s).with_cache(Arc::new(PageCache::new(32 << 20))), Layout::new("", "bench"), DbConfig::default()))
        .expect("open")
}

fn main() {
    let sizes: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1, 64] } else { sizes };
    let trace = std::env::var("TWILL_BENCH_TRACE").is_ok_and(|v| v == "1");
    println!("| database | rows | cold open + point query: store reads | bytes read | serial commit: writes | reads |");
    println!("|---|---|---|---|---|---|");
    for mib in sizes {
        let sim = Rc::new(SimStore::new(Rc::new(MemStore::new()), Latency::NONE, 1));
        let store = Rc::new(CountingStore::new(sim.clone()));
        let mut db = open(&store);
        block_on(db.transact(&[Statement::new("CREATE TABLE kv (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)")])).unwrap();
        let rows = (mib as i64 * (1 << 20)) / ROW_BYTES;
        let mut next = 0;
        while next < rows {
            let n = ROWS_PER_TX.min(rows - next);
            let insert = Statement::with_params(
                "WITH RECURSIVE s(v) AS (SELECT ? UNION ALL SELECT v + 1 FROM s WHERE v < ?) INSERT INTO kv SELECT v, randomblob(?) FROM s",
                vec![SqlValue::Integer(next), SqlValue::Integer(next + n - 1), SqlValue::Integer(ROW_BYTES)],
            );
            block_on(db.transact(&[insert])).expect("insert");
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
        if trace {
            sim.start_trace();
        }
        let mut cold = open(&store);
        let key = rows / 2 + 7;
        let r = block_on(cold.transact(&[Statement::with_params("SELECT length(pad) FROM kv WHERE id = ?", vec![SqlValue::Integer(key)])]))
            .unwrap();
        assert_eq!(r.results[0].rows, vec![vec![SqlValue::Integer(ROW_BYTES)]]);
        let c = store.counts().since(&before);
        for line in sim.take_trace() {
            eprintln!("  {line}");
        }
        println!(
            "| {mib} MiB | {rows} | {} | {} | {:.2} | {:.2} |",
            c.reads,
            c.bytes_read,
            serial.writes as f64 / commits as f64,
            serial.reads as f64 / commits as f64
        );
    }
}

