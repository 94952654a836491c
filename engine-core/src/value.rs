//! Values, parameters and results as the engine's callers see them, independent of turso's
//! internal types and of any wire format.

/// One SQL value. Integers are full 64-bit; it is the wire format's job not to lose them.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Bound parameters of one statement.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Params {
    #[default]
    None,
    /// For `?` and `?NNN`: element i binds parameter index i + 1.
    Positional(Vec<SqlValue>),
    /// For `:name`, `@name`, `$name`. Names may be given with or without the prefix.
    Named(Vec<(String, SqlValue)>),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Statement {
    pub sql: String,
    pub params: Params,
}

impl Statement {
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
    pub rows_affected: u64,
    pub rows_read: u64,
    pub rows_written: u64,
    /// Rowid of the last row this statement inserted, if it inserted any.
    pub last_insert_rowid: Option<i64>,
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
    /// Log records this request committed (0 for read-only requests).
    pub records_committed: u64,
}
