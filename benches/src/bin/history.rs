//! What history costs (issue 10), through the engine the Worker runs, on the in-memory object
//! store: a fork's R2 operations at a small and a large database (they must be equal: a fork
//! writes references and one record, never data), a restore's, import and export throughput
//! against an anchor of plain chunk PUTs and GETs of the same bytes measured in the same
//! run, and the storage a write-heavy hour leaves behind with a 7-day history window against
//! none.
//!
//! `cargo run --release -p twill-benches --bin history` (`TWILL_BENCH_SMOKE=1`: tiny sizes).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use engine_core::cache::PageCache;
use engine_core::dst::SimHost;
use engine_core::mem_store::MemStore;
use engine_core::store::{CountingStore, PutCondition, StoreCounts};
use engine_core::{Database, DbConfig, DbContext, EngineError, Layout, ObjectStore, SqlValue, Statement};
use futures::executor::block_on;
use futures::future::join_all;
use twill_benches::{scale, write_target};

const ROW_BYTES: i64 = 1000;
const ROWS_PER_TX: i64 = 2000;
const MIB: f64 = 1024.0 * 1024.0;
/// Imports write (and exports read) 256 KiB objects, 6 at a time, as the engine does.
const CHUNK_BYTES: usize = 256 * 1024;
const IN_FLIGHT: usize = 6;

type Store = CountingStore<MemStore>;

struct Bench {
    mem: Rc<MemStore>,
    store: Rc<Store>,
    host: Arc<SimHost>,
    cache: Arc<PageCache>,
}

impl Bench {
    fn new() -> Self {
        let mem = Rc::new(MemStore::new());
        let store = Rc::new(CountingStore::new(mem.clone()));
        Bench { mem, store, host: Arc::new(SimHost::new(1)), cache: Arc::new(PageCache::new(32 << 20)) }
    }

    fn open(&self, name: &str, config: DbConfig) -> Database {
        let s: Rc<dyn ObjectStore> = self.store.clone();
        let ctx = DbContext::new(s)
            .with_cache(self.cache.clone())
            .with_host(self.host.clone())
            .with_sleeper(engine_core::dst::sleeper(&self.host));
        block_on(Database::open(ctx, Layout::new("", name), config)).expect("open")
    }

    /// Stored bytes under `db/{name}/`.
    fn stored_bytes(&self, name: &str) -> u64 {
        let prefix = format!("db/{name}/");
        self.mem.keys().iter().filter(|k| k.starts_with(&prefix)).filter_map(|k| self.mem.raw_get(k)).map(|b| b.len() as u64).sum()
    }
}

fn exec(db: &mut Database, sql: &str, params: Vec<SqlValue>) {
    block_on(db.transact(&[Statement::with_params(sql, params)])).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A database of `mib` MiB of 1,000-byte rows, checkpointed.
fn build(bench: &Bench, name: &str, mib: u64, config: DbConfig) -> Database {
    let mut db = bench.open(name, config);
    exec(&mut db, "CREATE TABLE kv (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)", vec![]);
    let rows = (mib as i64 * (1 << 20)) / ROW_BYTES;
    let mut next = 0;
    while next < rows {
        let n = ROWS_PER_TX.min(rows - next);
        exec(
            &mut db,
            "WITH RECURSIVE s(v) AS (SELECT ? UNION ALL SELECT v + 1 FROM s WHERE v < ?) INSERT INTO kv SELECT v, randomblob(?) FROM s",
            vec![SqlValue::Integer(next), SqlValue::Integer(next + n - 1), SqlValue::Integer(ROW_BYTES)],
        );
        next += n;
    }
    block_on(db.checkpoint()).expect("checkpoint");
    db
}

fn rows(db: &mut Database) -> i64 {
    let r = block_on(db.transact(&[Statement::new("SELECT count(*) FROM kv")])).unwrap();
    match r.results[0].rows[0][0] {
        SqlValue::Integer(n) => n,
        ref v => panic!("count is {v:?}"),
    }
}

fn ops(c: &StoreCounts) -> String {
    format!("{} reads, {} writes, {:.1} KiB written", c.reads, c.writes, c.bytes_written as f64 / 1024.0)
}

/// The anchor: the file's bytes as 256 KiB objects, PUT then GET `IN_FLIGHT` at a time
/// straight on the store. Returns (PUT MB/s, GET MB/s).
fn anchor(bench: &Bench, file: &[u8]) -> (f64, f64) {
    let keys: Vec<String> = (0..file.len().div_ceil(CHUNK_BYTES)).map(|i| format!("anchor/{i:08}")).collect();
    let started = Instant::now();
    for batch in keys.chunks(IN_FLIGHT) {
        let puts = batch.iter().map(|k| {
            let i: usize = k[7..].parse().unwrap();
            bench.store.put(k, &file[i * CHUNK_BYTES..((i + 1) * CHUNK_BYTES).min(file.len())], PutCondition::CreateOnly)
        });
        for r in block_on(join_all(puts)) {
            r.expect("anchor put");
        }
    }
    let put = file.len() as f64 / MIB / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut read = 0;
    for batch in keys.chunks(IN_FLIGHT) {
        for r in block_on(join_all(batch.iter().map(|k| bench.store.get(k, None)))) {
            read += r.expect("anchor get").expect("present").body.len();
        }
    }
    assert_eq!(read, file.len());
    let get = file.len() as f64 / MIB / started.elapsed().as_secs_f64();
    block_on(bench.store.delete_many(&keys)).unwrap();
    (put, get)
}

fn export(db: &Database) -> Vec<u8> {
    let mut file = db.export_file().expect("export");
    let mut out = Vec::with_capacity(file.len() as usize);
    while let Some(piece) = block_on(file.next_piece()).expect("export piece") {
        out.extend_from_slice(&piece);
    }
    out
}

fn main() {
    let sizes = [1u64, scale(256, 4)];
    let bench = Bench::new();

    println!("### Forks and restores: R2 operations by database size\n");
    println!("| database | fork: R2 operations | fork time | restore: R2 operations | restore time |");
    println!("|---|---|---|---|---|");
    let mut fork_ops = Vec::new();
    let mut largest = None;
    for mib in sizes {
        let name = format!("h{mib}");
        let mut db = build(&bench, &name, mib, DbConfig::default());
        let before = bench.store.counts();
        let started = Instant::now();
        block_on(db.fork(db.applied_seq(), &format!("{name}-fork"))).expect("fork");
        let fork_time = started.elapsed();
        let fork = bench.store.counts().since(&before);
        // Restore: undo a few commits, on a warm replica.
        let target = db.applied_seq();
        for i in 0..5 {
            exec(&mut db, "UPDATE kv SET pad = randomblob(10) WHERE id = ?", vec![SqlValue::Integer(i * 7)]);
        }
        let before = bench.store.counts();
        let started = Instant::now();
        block_on(db.restore(target)).expect("restore");
        let restore_time = started.elapsed();
        let restore = bench.store.counts().since(&before);
        println!(
            "| {mib} MiB | {} | {:.1} ms | {} | {:.1} ms |",
            ops(&fork),
            fork_time.as_secs_f64() * 1e3,
            ops(&restore),
            restore_time.as_secs_f64() * 1e3
        );
        fork_ops.push((mib, fork.reads + fork.writes, fork.bytes_written));
        largest = Some((name, db));
    }
    let (small, large) = (fork_ops[0], fork_ops[fork_ops.len() - 1]);
    write_target(
        "a fork's R2 operations do not grow with the database",
        format!("{} at {} MiB, {} at {} MiB", small.1, small.0, large.1, large.0),
        small.1 == large.1,
    );

    println!("\n### Import and export throughput (in-memory store, no simulated latency)\n");
    let (name, mut db) = largest.expect("a database");
    let file = export(&db);
    let (put_anchor, get_anchor) = anchor(&bench, &file);
    let started = Instant::now();
    let file_again = export(&db);
    let export_mbs = file.len() as f64 / MIB / started.elapsed().as_secs_f64();
    assert_eq!(file, file_again);
    let mut imported = bench.open(&format!("{name}-imported"), DbConfig::default());
    let started = Instant::now();
    let pieces = futures::stream::iter(file.chunks(1 << 20).map(|c| Ok::<_, EngineError>(c.to_vec())).collect::<Vec<_>>());
    let answer = block_on(imported.import_file(pieces, false)).expect("import");
    let import_mbs = file.len() as f64 / MIB / started.elapsed().as_secs_f64();
    assert_eq!(rows(&mut imported), rows(&mut db));
    println!("| | MB/s | anchor (plain 256 KiB PUTs / GETs, 6 at a time) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| import of {:.1} MiB ({:?}) | {import_mbs:.0} | {put_anchor:.0} | {:.2}× |",
        file.len() as f64 / MIB,
        answer.check,
        import_mbs / put_anchor
    );
    println!("| export | {export_mbs:.0} | {get_anchor:.0} | {:.2}× |", export_mbs / get_anchor);

    let mib = scale(16, 1);
    let commits = scale(3600, 120);
    println!("\n### Storage a write-heavy hour leaves ({mib} MiB database, {commits} commits one a second, 4 rows rewritten each)\n");
    println!("| history window | stored after the hour | ÷ database size |");
    println!("|---|---|---|");
    let mut stored = Vec::new();
    for (label, window_ms) in [("none (0)", 0.0), ("7 days (default)", 7.0 * 86_400_000.0)] {
        let name = format!("hour-{}", stored.len());
        let config = DbConfig { history_retention_ms: window_ms, ..DbConfig::default() };
        let mut db = build(&bench, &name, mib, config);
        let rows = rows(&mut db);
        let size = bench.stored_bytes(&name);
        for i in 0..commits as i64 {
            bench.host.advance(1000.0);
            // Four rows rewritten per commit, spread over the database.
            let ids: Vec<SqlValue> = (0..4).map(|k| SqlValue::Integer((i * 7919 + k * 104_729) % rows)).collect();
            exec(&mut db, "UPDATE kv SET pad = randomblob(1000) WHERE id IN (?, ?, ?, ?)", ids);
        }
        // Past the GC retention (10 minutes): what is left is what the window keeps.
        bench.host.advance(15.0 * 60_000.0);
        exec(&mut db, "UPDATE kv SET pad = randomblob(1000) WHERE id = 1", vec![]);
        block_on(db.checkpoint()).expect("checkpoint");
        let after = bench.stored_bytes(&name);
        println!("| {label} | {:.1} MiB | {:.2}× |", after as f64 / MIB, after as f64 / size as f64);
        stored.push(after);
    }
    let overhead = stored[1] as f64 / stored[0] as f64;
    println!("\nKeeping a 7-day window stores {overhead:.2}× what no history stores after {commits} commits of 4 KiB of rows each.");
}
