//! SQL text in and out: a state exported as sqlite3's `.dump` writes it (C SQLite rebuilds
//! the same rows from it), dumps imported as one atomic commit, and what a dump may not do.

use engine_core::{Database, DbConfig, EngineError, SqlValue};
use twill_tests::{block_on, exec, query_ints, World};

const HOUR: f64 = 3_600_000.0;

fn config() -> DbConfig {
    DbConfig { checkpoint_records: 3, gc_retention_ms: 0.0, history_retention_ms: 24.0 * HOUR, ..DbConfig::default() }
}

/// The whole SQL text of a state, as the Worker streams it.
fn dump(db: Database) -> String {
    let mut dump = db.export_sql();
    let mut text = Vec::new();
    let mut pieces = 0;
    while let Some(piece) = block_on(dump.next_piece()).unwrap() {
        text.extend_from_slice(&piece);
        pieces += 1;
    }
    assert!(pieces >= 1);
    String::from_utf8(text).unwrap()
}

fn pieces(text: &str, size: usize) -> impl futures::Stream<Item = Result<Vec<u8>, EngineError>> + Unpin {
    futures::stream::iter(text.as_bytes().chunks(size.max(1)).map(|c| Ok(c.to_vec())).collect::<Vec<_>>())
}

/// Every row of `table` by rowid, as our values.
fn rows_of(db: &mut Database, table: &str) -> Vec<Vec<SqlValue>> {
    exec(db, &format!("SELECT * FROM {table} ORDER BY rowid"), vec![]).rows
}

fn rows_in_sqlite(conn: &rusqlite::Connection, table: &str) -> Vec<Vec<SqlValue>> {
    let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY rowid")).unwrap();
    let columns = stmt.column_count();
    stmt.query_map([], |row| {
        Ok((0..columns)
            .map(|i| match row.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => SqlValue::Null,
                rusqlite::types::ValueRef::Integer(n) => SqlValue::Integer(n),
                rusqlite::types::ValueRef::Real(r) => SqlValue::Real(r),
                rusqlite::types::ValueRef::Text(t) => SqlValue::Text(String::from_utf8(t.to_vec()).unwrap()),
                rusqlite::types::ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
            })
            .collect())
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Asserts equal rows, naming only the first that differs.
fn same_rows(got: Vec<Vec<SqlValue>>, want: Vec<Vec<SqlValue>>, what: &str) {
    if let Some(i) = (0..got.len().min(want.len())).find(|i| got[*i] != want[*i]) {
        panic!("{what}: row {i} differs: {:?} != {:?}", got[i], want[i]);
    }
    assert_eq!(got.len(), want.len(), "{what}: row count");
}

const TABLES: [&str; 2] = ["\"Odd \"\"Name\"\"\"", "log"];

fn fill(db: &mut Database) {
    exec(db, "CREATE TABLE \"Odd \"\"Name\"\"\" (id INTEGER PRIMARY KEY AUTOINCREMENT, v, pad BLOB)", vec![]);
    exec(db, "CREATE TABLE log (msg TEXT)", vec![]);
    exec(db, "CREATE INDEX odd_v ON \"Odd \"\"Name\"\"\" (v)", vec![]);
    exec(db, "CREATE VIEW recent AS SELECT id, v FROM \"Odd \"\"Name\"\"\" WHERE id > 1000", vec![]);
    exec(db, "CREATE TRIGGER odd_ins AFTER INSERT ON \"Odd \"\"Name\"\"\" BEGIN INSERT INTO log VALUES (new.v); END", vec![]);
    let values = [
        SqlValue::Null,
        SqlValue::Integer(-9_007_199_254_740_993),
        SqlValue::Integer(i64::MAX),
        SqlValue::Real(0.1),
        SqlValue::Real(-2.5e-7),
        SqlValue::Real(123456.789),
        SqlValue::Text("it's \"quoted\";\nover two lines -- not a comment".into()),
        SqlValue::Text("ünïcödé ✓".into()),
        SqlValue::Blob(vec![0, 1, 2, 254, 255]),
    ];
    for v in values {
        exec(db, "INSERT INTO \"Odd \"\"Name\"\"\" (v) VALUES (?)", vec![v]);
    }
    // Enough rows for several reads per table and several pieces of text.
    exec(
        db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)
         INSERT INTO \"Odd \"\"Name\"\"\" (v, pad) SELECT 'row' || i, randomblob(200) FROM n",
        vec![],
    );
    // AUTOINCREMENT remembers an id that no row has any more.
    exec(db, "INSERT INTO \"Odd \"\"Name\"\"\" (id, v) VALUES (5000, 'high')", vec![]);
    exec(db, "DELETE FROM \"Odd \"\"Name\"\"\" WHERE id = 5000", vec![]);
}

#[test]
fn a_dump_rebuilds_the_same_rows_in_c_sqlite_and_here() {
    let world = World::new(41);
    let mut db = world.open("src", config());
    fill(&mut db);
    let head = db.applied_seq();
    let text = dump(block_on(db.past(head)).unwrap());
    assert!(text.starts_with("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n"), "{}", &text[..200]);
    assert!(text.ends_with("COMMIT;\n"));
    assert!(text.len() > 256 << 10, "several pieces: {} bytes", text.len());
    let seq_at = text.find("sqlite_sequence").unwrap_or(0);
    assert!(text.contains("DELETE FROM sqlite_sequence;\nINSERT INTO \"sqlite_sequence\" VALUES('Odd \"Name\"',5000);"), "{}", &text[seq_at.saturating_sub(300)..seq_at + 300]);

    // C SQLite rebuilds it.
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch(&text).unwrap();
    for table in TABLES {
        same_rows(rows_in_sqlite(&conn, table), rows_of(&mut db, table), &format!("{table} in C SQLite"));
    }
    let next: i64 = conn
        .query_row("INSERT INTO \"Odd \"\"Name\"\"\" (v) VALUES ('next') RETURNING id", [], |r| r.get(0))
        .unwrap();
    assert_eq!(next, 5001, "the AUTOINCREMENT counter came along");

    // So does an import here, in pieces of any size, as one commit.
    let mut copy = world.open("copy", config());
    let imported = block_on(copy.import_sql(pieces(&text, 999), false)).unwrap();
    assert_eq!(copy.applied_seq(), 1, "one commit");
    assert!(imported.statements.unwrap() > 1500, "{imported:?}");
    let mut reader = world.open("copy", config());
    for table in TABLES {
        same_rows(rows_of(&mut reader, table), rows_of(&mut db, table), &format!("{table} imported"));
    }
    assert_eq!(query_ints(&mut reader, "SELECT count(*) FROM recent")[0], 509, "the view came along");
    exec(&mut reader, "INSERT INTO \"Odd \"\"Name\"\"\" (v) VALUES ('after')", vec![]);
    assert_eq!(query_ints(&mut reader, "SELECT max(id) FROM \"Odd \"\"Name\"\"\"")[0], 5001, "AUTOINCREMENT goes on");
    assert_eq!(
        query_ints(&mut reader, "SELECT count(*) FROM log WHERE msg = 'after'")[0],
        1,
        "the trigger came along"
    );
    let plan = exec(&mut reader, "EXPLAIN QUERY PLAN SELECT id FROM \"Odd \"\"Name\"\"\" WHERE v = 'row7'", vec![]);
    assert!(format!("{:?}", plan.rows).contains("odd_v"), "the index came along: {:?}", plan.rows);

    // An export of the imported copy is the same text.
    let again = dump(block_on(copy.past(copy.applied_seq())).unwrap());
    assert_eq!(again, text);
}

#[test]
fn a_dump_of_a_past_commit_holds_that_commit() {
    let world = World::new(42);
    let mut db = world.open("p", config());
    exec(&mut db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", vec![]);
    exec(&mut db, "INSERT INTO t (v) VALUES ('one')", vec![]);
    let before = db.applied_seq();
    exec(&mut db, "INSERT INTO t (v) VALUES ('two')", vec![]);
    exec(&mut db, "DROP TABLE t", vec![]);
    let past = dump(block_on(db.past(before)).unwrap());
    assert!(past.contains("INSERT INTO \"t\" VALUES(1,'one');") && !past.contains("'two'"), "{past}");
    let now = dump(block_on(db.past(db.applied_seq())).unwrap());
    assert_eq!(now, "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nCOMMIT;\n");
}

#[test]
fn a_dump_as_sqlite3_writes_it_imports_with_foreign_keys_off() {
    let world = World::new(43);
    let text = "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n\
        CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id) ON DELETE CASCADE);\n\
        INSERT INTO child VALUES(1,7);\n\
        CREATE TABLE IF NOT EXISTS \"parent\" (id INTEGER PRIMARY KEY, name TEXT);\n\
        INSERT INTO parent VALUES(7,'p'); -- a trailing comment\n\
        /* a block comment */ CREATE INDEX child_parent ON child(parent);\n\
        COMMIT;\n";
    let mut db = world.open("fk", config());
    let imported = block_on(db.import_sql(pieces(text, 13), false)).unwrap();
    assert_eq!(imported.statements, Some(5), "BEGIN, COMMIT and the pragma are the import's own");
    exec(&mut db, "DELETE FROM parent WHERE id = 7", vec![]);
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM child")[0], 0, "foreign keys are enforced after the import");
}

#[test]
fn a_dump_that_fails_commits_nothing_and_says_where() {
    let world = World::new(44);
    let config = DbConfig { sql_import_max_bytes: 256 << 10, ..config() };
    let mut db = world.open("bad", config);
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "sql",
            "CREATE TABLE t (x);\nINSERT INTO t VALUES (1);\n\nINSERT INTO nope VALUES (2);\n".into(),
            "SQL_ERROR",
            "statement 3 (line 4)",
        ),
        ("parse", "CREATE TABLE t (x);\nINSERT INTO t VALUES (1;\n".into(), "SQL_ERROR", "statement 2 (line 2)"),
        ("rollback", "BEGIN;\nCREATE TABLE t (x);\nROLLBACK; -- due to errors\n".into(), "INVALID_DATABASE_FILE", "ROLLBACK"),
        (
            "virtual",
            "PRAGMA writable_schema=ON;\nINSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql)VALUES('table','f','f',0,'CREATE VIRTUAL TABLE f USING fts5(x)');\n".into(),
            "INVALID_DATABASE_FILE",
            "virtual tables",
        ),
        ("attach", "ATTACH 'x.db' AS x;\n".into(), "STATEMENT_NOT_ALLOWED", "statement 1 (line 1)"),
        ("empty", "-- nothing\nBEGIN;\nCOMMIT;\n".into(), "INVALID_DATABASE_FILE", "no statements"),
        (
            "too big",
            "CREATE TABLE t (x);\n".to_string() + &"INSERT INTO t VALUES (randomblob(60000));\n".repeat(40),
            "LIMIT_EXCEEDED",
            "SQL_IMPORT_SIZE",
        ),
    ];
    for (what, text, code, says) in cases {
        let e = block_on(db.import_sql(pieces(&text, 10), false)).unwrap_err();
        assert_eq!(e.code(), code, "{what}: {e}");
        assert!(e.to_string().contains(says), "{what}: {e}");
        assert_eq!(db.applied_seq(), 0, "{what}: nothing was committed");
        assert!(world.keys("bad", "").iter().all(|k| !k.contains("upload")), "{what}: nothing uploaded is left");
    }

    // Into a database with tables: refused unless replace, and a replace can be undone.
    exec(&mut db, "CREATE TABLE keep (x)", vec![]);
    let e = block_on(db.import_sql(pieces("CREATE TABLE t (x);", 100), false)).unwrap_err();
    assert_eq!(e.code(), "DATABASE_NOT_EMPTY", "{e}");
    let replaced = block_on(db.import_sql(pieces("CREATE TABLE t (x); INSERT INTO t VALUES (1)", 100), true)).unwrap();
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM sqlite_schema WHERE name = 'keep'")[0], 0);
    block_on(db.restore(replaced.previous.0)).unwrap();
    assert_eq!(query_ints(&mut db, "SELECT count(*) FROM sqlite_schema WHERE name = 'keep'")[0], 1);
}
