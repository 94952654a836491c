//! Engine overhead (native): the same operations on the same data through raw `turso_core`
//! (its in-memory IO), through `engine-core` with a warm cache over the in-memory object
//! store (the whole commit protocol, minus network latency), and through C SQLite
//! (`rusqlite`, the anchor). C SQLite and raw turso prepare each statement anew, as a
//! client that keeps no statements does; `engine-core` keeps its prepared statements per
//! database (as it does for every request), and a second raw turso row keeps them too, so
//! the engine's own overhead shows against both.
//!
//! Writes a markdown section to stdout and target figures as JSON lines to `$TWILL_BENCH_TARGETS`.

use std::collections::HashMap;
use std::num::NonZero;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_core::mem_store::MemStore;
use engine_core::{Database, DbConfig, DbContext, Layout, ObjectStore, SqlValue, Statement};
use futures::executor::block_on;
use turso_core::{StepResult, Value};
use twill_benches::{scale, write_target, Percentiles};

/// Rows loaded (fewer in the smoke run; `k` stays distinct either way).
fn row_count() -> i64 {
    scale(100_000, 10_000)
}

const SCHEMA: [&str; 2] = [
    "CREATE TABLE items (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v TEXT NOT NULL)",
    "CREATE INDEX items_k ON items (k)",
];
const POINT: &str = "SELECT v FROM items WHERE id = ?";
const RANGE: &str = "SELECT id, v FROM items WHERE k >= ? ORDER BY k LIMIT 100";
const INSERT: &str = "INSERT INTO items (id, k, v) VALUES (?, ?, ?)";
/// Loads rows `[?1, ?2)`; `k` is a permutation of the ids (7 is coprime to 100,000).
const LOAD: &str = "WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?2) \
                    INSERT INTO items SELECT i, (i * 7) % 100000, 'value-' || i FROM s";

/// One engine under test. Every call is one statement or one transaction, checked.
trait Engine {
    fn name(&self) -> &'static str;
    fn exec(&mut self, sql: &str, params: &[SqlValue]) -> usize;
    /// Runs `statements` as one transaction.
    fn transaction(&mut self, statements: &[(&str, Vec<SqlValue>)]);
}

fn int(i: i64) -> SqlValue {
    SqlValue::Integer(i)
}

fn insert_params(id: i64) -> Vec<SqlValue> {
    vec![int(id), int(id), SqlValue::Text(format!("new-{id}"))]
}

// ---- raw turso_core on its in-memory IO ----

struct RawTurso {
    /// Statements kept by SQL text and reset after each run (as engine-core keeps them);
    /// `None`: each one is prepared anew. Dropped before the connection.
    kept: Option<HashMap<String, turso_core::Statement>>,
    conn: Arc<turso_core::Connection>,
    _db: Arc<turso_core::Database>,
}

impl RawTurso {
    fn new(keep_statements: bool) -> Self {
        let io: Arc<dyn turso_core::IO> = Arc::new(turso_core::MemoryIO::new());
        let path = if keep_statements { "raw-turso-kept.db" } else { "raw-turso.db" };
        let db = turso_core::Database::open_file(io, path, Arc::new(turso_core::SqliteDialect)).expect("open turso");
        let conn = db.connect().expect("connect");
        RawTurso { kept: keep_statements.then(HashMap::new), conn, _db: db }
    }
}

impl Engine for RawTurso {
    fn name(&self) -> &'static str {
        if self.kept.is_some() {
            "raw turso_core (MemoryIO), statements kept"
        } else {
            "raw turso_core (MemoryIO)"
        }
    }
    fn exec(&mut self, sql: &str, params: &[SqlValue]) -> usize {
        let mut stmt = match self.kept.as_mut().and_then(|k| k.remove(sql)) {
            Some(stmt) => stmt,
            None => self.conn.prepare(sql).expect("prepare"),
        };
        for (i, p) in params.iter().enumerate() {
            let v = match p {
                SqlValue::Integer(i) => Value::from_i64(*i),
                SqlValue::Text(t) => Value::build_text(t.clone()),
                other => panic!("unused parameter type {other:?}"),
            };
            stmt.bind_at(NonZero::new(i + 1).unwrap(), v).expect("bind");
        }
        let mut rows = 0;
        loop {
            match stmt.step().expect("step") {
                StepResult::Row => {
                    let row = stmt.row().expect("row");
                    std::hint::black_box(row.get_values().count());
                    rows += 1;
                }
                StepResult::Done => {
                    if let Some(kept) = self.kept.as_mut() {
                        stmt.reset().expect("reset");
                        kept.insert(sql.to_owned(), stmt);
                    }
                    return rows;
                }
                StepResult::IO | StepResult::Yield => stmt._io().step().expect("io"),
                other => panic!("unexpected step result {other:?}"),
            }
        }
    }
    fn transaction(&mut self, statements: &[(&str, Vec<SqlValue>)]) {
        self.exec("BEGIN", &[]);
        for (sql, params) in statements {
            self.exec(sql, params);
        }
        self.exec("COMMIT", &[]);
    }
}

// ---- engine-core over the in-memory object store ----

struct EngineCore {
    db: Database,
    label: &'static str,
}

impl EngineCore {
    fn new(max_staleness_ms: f64, label: &'static str) -> Self {
        let store: Rc<dyn ObjectStore> = Rc::new(MemStore::new());
        let mut config = DbConfig { max_staleness_ms, ..DbConfig::default() };
        config.limits.max_vm_steps = 100_000_000;
        let db = block_on(Database::open(DbContext::new(store), Layout::new("", "bench"), config)).expect("open");
        EngineCore { db, label }
    }
}

impl Engine for EngineCore {
    fn name(&self) -> &'static str {
        self.label
    }
    fn exec(&mut self, sql: &str, params: &[SqlValue]) -> usize {
        let r = block_on(self.db.transact(&[Statement::with_params(sql, params.to_vec())])).expect("transact");
        r.results[0].rows.len()
    }
    fn transaction(&mut self, statements: &[(&str, Vec<SqlValue>)]) {
        let stmts: Vec<Statement> = statements.iter().map(|(sql, p)| Statement::with_params(*sql, p.clone())).collect();
        block_on(self.db.transact(&stmts)).expect("transact");
    }
}

// ---- C SQLite ----

struct Sqlite {
    conn: rusqlite::Connection,
}

impl Sqlite {
    fn new() -> Self {
        let conn = rusqlite::Connection::open_in_memory().expect("open sqlite");
        Sqlite { conn }
    }
}

impl Engine for Sqlite {
    fn name(&self) -> &'static str {
        "C SQLite (rusqlite, in memory)"
    }
    fn exec(&mut self, sql: &str, params: &[SqlValue]) -> usize {
        let mut stmt = self.conn.prepare(sql).expect("prepare");
        let values: Vec<rusqlite::types::Value> = params
            .iter()
            .map(|p| match p {
                SqlValue::Integer(i) => rusqlite::types::Value::Integer(*i),
                SqlValue::Text(t) => rusqlite::types::Value::Text(t.clone()),
                other => panic!("unused parameter type {other:?}"),
            })
            .collect();
        let mut rows = stmt.query(rusqlite::params_from_iter(values)).expect("query");
        let mut n = 0;
        while let Some(row) = rows.next().expect("row") {
            std::hint::black_box(row.get_ref(0).expect("column"));
            n += 1;
        }
        n
    }
    fn transaction(&mut self, statements: &[(&str, Vec<SqlValue>)]) {
        self.exec("BEGIN", &[]);
        for (sql, params) in statements {
            self.exec(sql, params);
        }
        self.exec("COMMIT", &[]);
    }
}

// ---- the workload ----

fn load(e: &mut dyn Engine) {
    for sql in SCHEMA {
        e.exec(sql, &[]);
    }
    let step = 10_000;
    for from in (0..row_count()).step_by(step as usize) {
        e.transaction(&[(LOAD, vec![int(from), int(from + step)])]);
    }
    assert_eq!(e.exec("SELECT id FROM items WHERE id = ?", &[int(row_count() - 1)]), 1, "{}: data loaded", e.name());
}

struct Row {
    engine: &'static str,
    op: &'static str,
    p: Percentiles,
}

const OPS: [&str; 4] = ["point select by key", "index range scan, 100 rows", "single-row insert (autocommit)", "1,000-row insert transaction"];

/// Timed calls per operation (and a tenth as many untimed ones first).
fn iterations(op: usize) -> usize {
    [scale(20_000, 200), scale(4_000, 40), scale(4_000, 40), scale(30, 3)][op]
}

/// The engines take turns, in this many rounds per operation, so that drift in the
/// machine's speed during the run hits them all alike.
const ROUNDS: usize = 10;

/// One call of operation `op`; `i` picks the key, `next_id` is the engine's next free id.
fn run_op(e: &mut dyn Engine, op: usize, i: usize, next_id: &mut i64) {
    // Pseudo-random keys, the same sequence for every engine.
    let key = ((i as i64).wrapping_mul(48_271) % row_count()).abs();
    match op {
        0 => assert_eq!(e.exec(POINT, &[int(key)]), 1),
        1 => assert_eq!(e.exec(RANGE, &[int(key % (row_count() - 100))]), 100),
        2 => {
            e.exec(INSERT, &insert_params(*next_id));
            *next_id += 1;
        }
        _ => {
            let stmts: Vec<(&str, Vec<SqlValue>)> = (0..1000).map(|j| (INSERT, insert_params(*next_id + j))).collect();
            e.transaction(&stmts);
            *next_id += 1000;
        }
    }
}

fn measure_all(engines: &mut [Box<dyn Engine>]) -> Vec<Row> {
    let mut next_ids = vec![1_000_000i64; engines.len()];
    let mut rows = Vec::new();
    for (op, op_name) in OPS.iter().enumerate() {
        let n = iterations(op);
        let per_round = n.div_ceil(ROUNDS);
        for (e, next_id) in engines.iter_mut().zip(next_ids.iter_mut()) {
            for i in 0..n / 10 {
                run_op(e.as_mut(), op, i, next_id);
            }
        }
        let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); engines.len()];
        for round in 0..ROUNDS {
            for ((e, next_id), samples) in engines.iter_mut().zip(next_ids.iter_mut()).zip(samples.iter_mut()) {
                for j in 0..per_round {
                    let t = Instant::now();
                    run_op(e.as_mut(), op, n / 10 + round * per_round + j, next_id);
                    samples.push(t.elapsed());
                }
            }
        }
        for (e, samples) in engines.iter().zip(&samples) {
            rows.push(Row { engine: e.name(), op: op_name, p: Percentiles::of(samples) });
        }
    }
    for (e, next_id) in engines.iter_mut().zip(&next_ids) {
        let name = e.name();
        assert_eq!(e.exec("SELECT id FROM items WHERE id = ?", &[int(next_id - 1)]), 1, "{name}: inserts landed");
    }
    rows
}

fn main() {
    if std::env::var("TWILL_BENCH_PROFILE").is_ok_and(|v| v == "point") {
        // For `perf record`: engine-core point selects and nothing else after loading.
        let mut e = EngineCore::new(0.0, "engine-core");
        load(&mut e);
        for i in 0..200_000i64 {
            assert_eq!(e.exec(POINT, &[int(i * 48_271 % row_count())]), 1);
        }
        return;
    }
    let mut engines: Vec<Box<dyn Engine>> = vec![
        Box::new(Sqlite::new()),
        Box::new(RawTurso::new(false)),
        Box::new(RawTurso::new(true)),
        Box::new(EngineCore::new(0.0, "engine-core, warm cache, MemStore")),
        Box::new(EngineCore::new(60_000.0, "engine-core, bounded staleness 60 s")),
    ];
    for e in engines.iter_mut() {
        load(e.as_mut());
    }
    let rows = measure_all(&mut engines);
    let ops = OPS;
    println!("C SQLite {} (bundled by rusqlite), turso_core 0.8.3.", rusqlite::version());
    println!();
    print!("Same data in every engine: {} rows", row_count());
    println!(" `items(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)` with an index on `k`.");
    println!("Latency per operation in µs (p50 / p99 / mean) and ratios of the means. C SQLite and raw turso_core prepare each statement anew;");
    println!("`engine-core` keeps prepared statements per database (reset after each run, prepared again by turso after a schema change),");
    println!("and so does the \"statements kept\" raw turso row: compare engine-core with it for the engine's own overhead.");
    println!("`engine-core` includes the commit protocol over the in-memory object store: every read probes freshness");
    println!("(GET of the next log record + HEAD of the manifest), every commit encodes a log record, PUTs it and checkpoints every 32.");
    println!("The bounded-staleness row skips the read probe (`x-twill-max-staleness-ms`). The engines take turns in {ROUNDS} rounds per operation.");
    println!();
    println!("| operation | engine | p50 µs | p99 µs | mean µs | ops/s | × C SQLite | × raw turso | × raw turso, kept |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for op in &ops {
        let anchor = rows.iter().find(|r| r.op == *op && r.engine == rows[0].engine).unwrap().p.mean;
        let turso = rows.iter().find(|r| r.op == *op && r.engine == "raw turso_core (MemoryIO)").unwrap().p.mean;
        let kept = rows.iter().find(|r| r.op == *op && r.engine.ends_with("statements kept")).unwrap().p.mean;
        for r in rows.iter().filter(|r| r.op == *op) {
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.2} | {:.2} | {:.2} |",
                r.op,
                r.engine,
                r.p.p50 * 1e3,
                r.p.p99 * 1e3,
                r.p.mean * 1e3,
                1e3 / r.p.mean,
                r.p.mean / anchor,
                r.p.mean / turso,
                r.p.mean / kept
            );
        }
    }
    let mean = |engine: &str, op: &str| rows.iter().find(|r| r.engine == engine && r.op == op).unwrap().p.mean;
    let ratio = mean("engine-core, warm cache, MemStore", "point select by key") / mean("raw turso_core (MemoryIO)", "point select by key");
    write_target("engine-core warm point select ≤ 1.25× raw turso_core", format!("{ratio:.2}×"), ratio <= 1.25);
}
