//! Exporting one commit's state as SQL text, in the form sqlite3's `.dump` writes (so
//! `sqlite3 new.db < dump.sql` rebuilds it, and an import of the text here does too),
//! produced a piece at a time in bounded memory: rows are read in pages by rowid.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;

use crate::error::EngineError;
use crate::value::SqlValue;

use super::Database;

/// Rows read per query while dumping a table.
const ROWS_PER_READ: usize = 100;
/// Text gathered before a piece is handed out.
const PIECE_BYTES: usize = 256 << 10;

/// What is left to write.
enum Item {
    Text(String),
    /// The rows of a table after rowid `after`.
    Rows { table: String, after: Option<i64> },
}

/// The SQL text of one state, handed out piece by piece.
pub struct SqlDump {
    past: Database,
    /// Table names as the schema spells them, by their folded form: sqlite_sequence rows
    /// name their table folded, and C SQLite looks them up as the schema spells it.
    table_names: HashMap<String, String>,
    queue: VecDeque<Item>,
    planned: bool,
    finished: bool,
}

/// `name` as a quoted SQL identifier.
fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a SQL literal that reads back as the same value.
fn literal(out: &mut String, value: &SqlValue) {
    match value {
        SqlValue::Null => out.push_str("NULL"),
        SqlValue::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        SqlValue::Real(r) if r.is_nan() => out.push_str("NULL"),
        SqlValue::Real(r) if r.is_infinite() => out.push_str(if *r > 0.0 { "1e999" } else { "-1e999" }),
        // Rust's shortest representation that reads back as the same double; always with
        // a `.` or an exponent so that it stays a REAL.
        SqlValue::Real(r) => {
            let _ = write!(out, "{r:?}");
        }
        SqlValue::Text(t) if t.contains('\0') => {
            // A NUL cannot stand in a string literal.
            out.push_str("CAST(X'");
            hex(out, t.as_bytes());
            out.push_str("' AS TEXT)");
        }
        SqlValue::Text(t) => {
            out.push('\'');
            out.push_str(&t.replace('\'', "''"));
            out.push('\'');
        }
        SqlValue::Blob(b) => {
            out.push_str("X'");
            hex(out, b);
            out.push('\'');
        }
    }
}

fn hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

impl SqlDump {
    /// The next piece of the text (`None` once all was handed out). A failure after the
    /// first piece ends the text with `ROLLBACK; -- ...`, as sqlite3 does, so that the
    /// text is never mistaken for a whole dump (importing it is refused).
    pub async fn next_piece(&mut self) -> Result<Option<Vec<u8>>, EngineError> {
        if self.finished {
            return Ok(None);
        }
        let mut out = String::new();
        match self.fill(&mut out).await {
            Ok(()) => {}
            Err(e) if self.planned => {
                let _ = writeln!(out, "ROLLBACK; -- the export failed: {}", e.to_string().replace('\n', " "));
                self.finished = true;
            }
            Err(e) => return Err(e),
        }
        if self.queue.is_empty() {
            self.finished = true;
        }
        Ok(Some(out.into_bytes()))
    }

    async fn fill(&mut self, out: &mut String) -> Result<(), EngineError> {
        if !self.planned {
            self.plan().await?;
            self.planned = true;
        }
        while out.len() < PIECE_BYTES {
            let Some(item) = self.queue.pop_front() else { return Ok(()) };
            match item {
                Item::Text(text) => out.push_str(&text),
                Item::Rows { table, after } => {
                    let filter = after.map(|r| format!(" WHERE rowid > {r}")).unwrap_or_default();
                    let sql = format!("SELECT rowid, * FROM {}{filter} ORDER BY rowid LIMIT {ROWS_PER_READ}", identifier(&table));
                    let rows = self.past.read_rows(&sql).await?;
                    let mut last = None;
                    for row in &rows {
                        let Some((SqlValue::Integer(rowid), values)) = row.split_first() else {
                            return Err(EngineError::Internal(format!("a row of {table} came without its rowid")));
                        };
                        last = Some(*rowid);
                        let mut values = values.to_vec();
                        if table == "sqlite_sequence" {
                            if let Some(SqlValue::Text(name)) = values.first_mut() {
                                if let Some(spelled) = self.table_names.get(&name.to_lowercase()) {
                                    *name = spelled.clone();
                                }
                            }
                        }
                        let _ = write!(out, "INSERT INTO {} VALUES(", identifier(&table));
                        for (i, v) in values.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            literal(out, v);
                        }
                        out.push_str(");\n");
                    }
                    if rows.len() == ROWS_PER_READ {
                        self.queue.push_front(Item::Rows { table, after: last });
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads the schema and lays out the text as sqlite3's `.dump` does: tables with their
    /// rows, then indexes, triggers and views. Virtual tables are written into the schema
    /// directly (`PRAGMA writable_schema`), their shadow tables as plain tables.
    async fn plan(&mut self) -> Result<(), EngineError> {
        let schema = self.past.read_rows("SELECT type, name, sql FROM sqlite_schema ORDER BY rowid").await?;
        let mut writable_schema = false;
        let mut sequence = false;
        let mut later = Vec::new();
        self.queue.push_back(Item::Text("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n".into()));
        for row in schema {
            let [SqlValue::Text(kind), SqlValue::Text(name), sql] = row.as_slice() else {
                return Err(EngineError::Corrupt("the schema table holds a malformed row".into()));
            };
            let SqlValue::Text(sql) = sql else { continue }; // automatic indexes have no SQL
            if kind != "table" {
                later.push(format!("{sql};\n"));
                continue;
            }
            self.table_names.insert(name.to_lowercase(), name.clone());
            if name == "sqlite_sequence" {
                // After every table: C SQLite makes it with the first AUTOINCREMENT table.
                sequence = true;
                continue;
            } else if name.starts_with("sqlite_") {
                // sqlite_stat*: ANALYZE makes them again.
                continue;
            } else if sql.len() >= 20 && sql[..20].eq_ignore_ascii_case("CREATE VIRTUAL TABLE") {
                if !writable_schema {
                    self.queue.push_back(Item::Text("PRAGMA writable_schema=ON;\n".into()));
                    writable_schema = true;
                }
                let mut text = String::from("INSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql)VALUES('table',");
                let name = SqlValue::Text(name.clone());
                literal(&mut text, &name);
                text.push(',');
                literal(&mut text, &name);
                text.push_str(",0,");
                literal(&mut text, &SqlValue::Text(sql.clone()));
                text.push_str(");\n");
                self.queue.push_back(Item::Text(text));
                continue;
            } else {
                self.queue.push_back(Item::Text(format!("{sql};\n")));
            }
            self.queue.push_back(Item::Rows { table: name.clone(), after: None });
        }
        if sequence {
            self.queue.push_back(Item::Text("DELETE FROM sqlite_sequence;\n".into()));
            self.queue.push_back(Item::Rows { table: "sqlite_sequence".into(), after: None });
        }
        self.queue.extend(later.into_iter().map(Item::Text));
        if writable_schema {
            self.queue.push_back(Item::Text("PRAGMA writable_schema=OFF;\n".into()));
        }
        self.queue.push_back(Item::Text("COMMIT;\n".into()));
        Ok(())
    }
}

impl Database {
    /// This state (a past one from [`Database::past`], or the newest) as SQL text.
    pub fn export_sql(self) -> SqlDump {
        SqlDump { past: self, table_names: HashMap::new(), queue: VecDeque::new(), planned: false, finished: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_read_back_as_the_same_values() {
        let mut out = String::new();
        for v in [
            SqlValue::Null,
            SqlValue::Integer(i64::MIN),
            SqlValue::Real(0.1),
            SqlValue::Real(1e300),
            SqlValue::Real(2.0),
            SqlValue::Real(f64::NEG_INFINITY),
            SqlValue::Text("it's".into()),
            SqlValue::Text("a\0b".into()),
            SqlValue::Blob(vec![0, 255]),
        ] {
            literal(&mut out, &v);
            out.push(' ');
        }
        assert_eq!(out, "NULL -9223372036854775808 0.1 1e300 2.0 -1e999 'it''s' CAST(X'610062' AS TEXT) X'00ff' ");
    }
}
