//! Values, parameters and results as the engine's callers see them, independent of turso's
//! internal types and of any wire format. (Their serde form is exact, for carrying
//! interactive transactions between requests; wire formats have their own.)

use serde::{Deserialize, Serialize};

/// One SQL value. Integers are full 64-bit; it is the wire format's job not to lose them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SqlValue {
    Null,
    Integer(i64),
    /// Serialized as its bits: JSON has no infinities.
    Real(#[serde(with = "real_bits")] f64),
    Text(String),
    Blob(#[serde(with = "base64_bytes")] Vec<u8>),
}

impl SqlValue {
    /// Approximate bytes the value takes.
    pub fn weight(&self) -> usize {
        match self {
            SqlValue::Null | SqlValue::Integer(_) | SqlValue::Real(_) => 8,
            SqlValue::Text(t) => t.len() + 8,
            SqlValue::Blob(b) => b.len() + 8,
        }
    }
}

mod real_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(f.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(f64::from_bits(u64::deserialize(d)?))
    }
}

/// Bytes as base64 text in JSON (blobs here, embedded pages in manifests).
pub(crate) mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD_NO_PAD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Bound parameters of one statement.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum Params {
    #[default]
    None,
    /// For `?` and `?NNN`: element i binds parameter index i + 1.
    Positional(Vec<SqlValue>),
    /// For `:name`, `@name`, `$name`. Names may be given with or without the prefix.
    Named(Vec<(String, SqlValue)>),
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Statement {
    pub sql: String,
    pub params: Params,
}

impl Statement {
    /// Approximate bytes of SQL and parameters.
    pub fn weight(&self) -> usize {
        self.sql.len()
            + match &self.params {
                Params::None => 0,
                Params::Positional(values) => values.iter().map(SqlValue::weight).sum(),
                Params::Named(pairs) => pairs.iter().map(|(n, v)| n.len() + v.weight()).sum(),
            }
    }

    pub fn new(sql: impl Into<String>) -> Self {
        Statement { sql: sql.into(), params: Params::None }
    }
    pub fn with_params(sql: impl Into<String>, params: Vec<SqlValue>) -> Self {
        Statement { sql: sql.into(), params: Params::Positional(params) }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatementResult {
    pub columns: Vec<String>,
    /// Declared column types, as written in the schema (empty when unknown).
    pub decltypes: Vec<Option<String>>,
    pub rows: Vec<Vec<SqlValue>>,
    /// Rows the statement changed, as SQLite's `changes()`: for INSERT, UPDATE and DELETE
    /// only (0 for every other statement).
    pub rows_affected: u64,
    pub rows_read: u64,
    pub rows_written: u64,
    /// Rowid of the last row this statement inserted, if it inserted any.
    pub last_insert_rowid: Option<i64>,
    /// The connection's `last_insert_rowid()` after the statement (what libSQL reports
    /// for every INSERT, even one that inserted nothing).
    pub connection_last_insert_rowid: i64,
    /// The statement is an INSERT (or REPLACE).
    pub is_insert: bool,
}

/// What a statement takes and returns, found by preparing it without running it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Description {
    /// Parameter names in index order (`None` for `?`).
    pub params: Vec<Option<String>>,
    /// Result columns: name and declared type.
    pub columns: Vec<(String, Option<String>)>,
    pub is_explain: bool,
    pub is_readonly: bool,
}

/// Per-request counters for `meta` and `Server-Timing`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExecStats {
    pub rows_read: u64,
    pub rows_written: u64,
    /// Log records this request applied from other writers (catch-up).
    pub records_applied: u64,
    /// Times the transaction was re-run after losing a commit race.
    pub retries: u32,
    /// Times the request ran again from its start because a page it needed was not cached
    /// where turso cannot wait for it (opening, BEGIN/COMMIT); reads inside statements wait
    /// for their pages and never cause this.
    pub page_restarts: u32,
    /// Log records this request committed (0 for read-only requests).
    pub records_committed: u64,
    /// The log position the answer reflects (its bookmark): the newest commit it saw, or
    /// the one it made.
    pub bookmark: u64,
}
