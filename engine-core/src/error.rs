//! Every error the engine reports, each with a stable code for the wire, and SQL failures
//! with SQLite's result code (what libSQL clients and ORMs branch on).

use thiserror::Error;

use crate::log_record::RecordError;
use crate::store::StoreError;
use crate::unsupported::UnsupportedFeature;

/// A SQLite result code: a primary code, or an extended one where the engine knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteCode {
    Error,
    Abort,
    Busy,
    ReadOnly,
    Interrupt,
    Corrupt,
    Full,
    TooBig,
    Constraint,
    ConstraintCheck,
    ConstraintForeignKey,
    ConstraintNotNull,
    ConstraintPrimaryKey,
    ConstraintTrigger,
    ConstraintUnique,
    Mismatch,
    Range,
    NotADb,
}

impl SqliteCode {
    /// The name of the code itself (extended where known), e.g. `SQLITE_CONSTRAINT_UNIQUE`.
    pub fn name(self) -> &'static str {
        match self {
            SqliteCode::Error => "SQLITE_ERROR",
            SqliteCode::Abort => "SQLITE_ABORT",
            SqliteCode::Busy => "SQLITE_BUSY",
            SqliteCode::ReadOnly => "SQLITE_READONLY",
            SqliteCode::Interrupt => "SQLITE_INTERRUPT",
            SqliteCode::Corrupt => "SQLITE_CORRUPT",
            SqliteCode::Full => "SQLITE_FULL",
            SqliteCode::TooBig => "SQLITE_TOOBIG",
            SqliteCode::Constraint => "SQLITE_CONSTRAINT",
            SqliteCode::ConstraintCheck => "SQLITE_CONSTRAINT_CHECK",
            SqliteCode::ConstraintForeignKey => "SQLITE_CONSTRAINT_FOREIGNKEY",
            SqliteCode::ConstraintNotNull => "SQLITE_CONSTRAINT_NOTNULL",
            SqliteCode::ConstraintPrimaryKey => "SQLITE_CONSTRAINT_PRIMARYKEY",
            SqliteCode::ConstraintTrigger => "SQLITE_CONSTRAINT_TRIGGER",
            SqliteCode::ConstraintUnique => "SQLITE_CONSTRAINT_UNIQUE",
            SqliteCode::Mismatch => "SQLITE_MISMATCH",
            SqliteCode::Range => "SQLITE_RANGE",
            SqliteCode::NotADb => "SQLITE_NOTADB",
        }
    }

    /// The numeric (extended) result code, as `sqlite3_extended_errcode` returns it.
    pub fn raw(self) -> i32 {
        match self {
            SqliteCode::Error => 1,
            SqliteCode::Abort => 4,
            SqliteCode::Busy => 5,
            SqliteCode::ReadOnly => 8,
            SqliteCode::Interrupt => 9,
            SqliteCode::Corrupt => 11,
            SqliteCode::Full => 13,
            SqliteCode::TooBig => 18,
            SqliteCode::Constraint => 19,
            SqliteCode::ConstraintCheck => 275,
            SqliteCode::ConstraintForeignKey => 787,
            SqliteCode::ConstraintNotNull => 1299,
            SqliteCode::ConstraintPrimaryKey => 1555,
            SqliteCode::ConstraintTrigger => 1811,
            SqliteCode::ConstraintUnique => 2067,
            SqliteCode::Mismatch => 20,
            SqliteCode::Range => 25,
            SqliteCode::NotADb => 26,
        }
    }
}

/// A statement that failed in the SQL engine: SQLite's message and result code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlFailure {
    pub message: String,
    pub code: SqliteCode,
}

impl std::fmt::Display for SqlFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EngineError {
    /// The SQL failed (syntax, constraint, type...). The database is unchanged.
    #[error("{0}")]
    Sql(SqlFailure),
    /// The parameters do not fit the statement.
    #[error("{0}")]
    Params(String),
    /// The statement is not allowed through this interface (e.g. BEGIN/COMMIT, ATTACH).
    #[error("{0}")]
    NotAllowed(String),
    /// Another writer kept committing first; the transaction was not committed.
    #[error("write conflict: other writers kept committing first ({attempts} attempts in {elapsed_ms} ms); the transaction was not committed")]
    Conflict { attempts: u32, elapsed_ms: u64 },
    /// An interactive transaction cannot continue: what it read has changed since (or it
    /// used values that differ on replay). Nothing of it was committed; run it again.
    #[error("transaction conflict: {0}; nothing of the transaction was committed, run it again")]
    TxConflict(String),
    /// The commit may or may not be durable (the store failed and the outcome could not be
    /// resolved). It was not acknowledged; read the data to find out.
    #[error("commit outcome unknown: {0}")]
    CommitUnknown(String),
    /// The request did not get its turn on the database in time; nothing of it ran.
    #[error("database busy: {0}")]
    Busy(String),
    /// The store failed before anything was committed.
    #[error("storage unavailable: {0}")]
    Storage(StoreError),
    /// The durable state is not readable (a record failed validation).
    #[error("corrupt durable state: {0}")]
    Corrupt(String),
    /// A resource limit was hit.
    #[error("{0}")]
    Limit(String),
    /// A bookmark that names no commit of this database.
    #[error("{0}")]
    InvalidBookmark(String),
    /// The commit or time asked for is outside the history window (older than the
    /// retention, before a deletion, or newer than the newest commit).
    #[error("{0}")]
    OutsideHistory(String),
    /// An imported file is not a SQLite database this engine can serve.
    #[error("{0}")]
    InvalidFile(String),
    /// An import without `replace` found tables in the database.
    #[error("{0}")]
    NotEmpty(String),
    /// The database to be created (a fork's) already exists.
    #[error("{0}")]
    Exists(String),
    /// The statement was interrupted (time or work budget).
    #[error("{0}")]
    Interrupted(String),
    /// No upload session of that id (never begun, finished, aborted or swept).
    #[error("{0}")]
    UploadNotFound(String),
    /// The upload session is not in a state that allows this (a part sent again with
    /// other bytes, a session being completed, parts missing).
    #[error("{0}")]
    UploadConflict(String),
    /// The upload session outlived its lifetime.
    #[error("{0}")]
    UploadExpired(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Pages turso needed were not cached (internal: the engine fetches them and retries).
    #[error("pages not cached: {0:?}")]
    PagesMissing(Vec<u32>),
    /// An object of an older checkpoint was already garbage-collected (internal: the
    /// engine reloads from the newest manifest and retries).
    #[error("checkpoint object gone: {0}")]
    BaseGone(String),
}

impl EngineError {
    /// A SQL error with SQLite's generic code.
    pub fn sql(message: impl Into<String>) -> Self {
        EngineError::Sql(SqlFailure { message: message.into(), code: SqliteCode::Error })
    }

    /// A statement's SQL text held a second statement after the first.
    pub fn more_than_one_statement() -> Self {
        EngineError::sql("more than one statement in one SQL string; send them as separate statements of a batch")
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Sql(_) => "SQL_ERROR",
            EngineError::Params(_) => "INVALID_PARAMS",
            EngineError::NotAllowed(_) => "STATEMENT_NOT_ALLOWED",
            EngineError::Conflict { .. } => "WRITE_CONFLICT",
            EngineError::TxConflict(_) => "TRANSACTION_CONFLICT",
            EngineError::CommitUnknown(_) => "COMMIT_OUTCOME_UNKNOWN",
            EngineError::Busy(_) => "DATABASE_BUSY",
            EngineError::Storage(_) => "STORAGE_UNAVAILABLE",
            EngineError::Corrupt(_) => "CORRUPT_STATE",
            EngineError::Limit(_) => "LIMIT_EXCEEDED",
            EngineError::InvalidBookmark(_) => "INVALID_BOOKMARK",
            EngineError::OutsideHistory(_) => "HISTORY_UNAVAILABLE",
            EngineError::Exists(_) => "DATABASE_EXISTS",
            EngineError::InvalidFile(_) => "INVALID_DATABASE_FILE",
            EngineError::NotEmpty(_) => "DATABASE_NOT_EMPTY",
            EngineError::Interrupted(_) => "QUERY_INTERRUPTED",
            EngineError::UploadNotFound(_) => "UPLOAD_NOT_FOUND",
            EngineError::UploadConflict(_) => "UPLOAD_CONFLICT",
            EngineError::UploadExpired(_) => "UPLOAD_EXPIRED",
            EngineError::Internal(_) | EngineError::PagesMissing(_) | EngineError::BaseGone(_) => "INTERNAL_ERROR",
        }
    }

    /// SQLite's result code for this error, where SQLite has one.
    pub fn sqlite_code(&self) -> Option<SqliteCode> {
        match self {
            EngineError::Sql(f) => Some(f.code),
            EngineError::Params(_) => Some(SqliteCode::Range),
            EngineError::Interrupted(_) => Some(SqliteCode::Interrupt),
            EngineError::Conflict { .. } | EngineError::TxConflict(_) | EngineError::Busy(_) => Some(SqliteCode::Busy),
            EngineError::Limit(_) => Some(SqliteCode::TooBig),
            EngineError::Corrupt(_) => Some(SqliteCode::Corrupt),
            _ => None,
        }
    }

    /// True when the client's request was at fault (HTTP 4xx class).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            EngineError::Sql(_)
                | EngineError::Params(_)
                | EngineError::NotAllowed(_)
                | EngineError::Limit(_)
                | EngineError::InvalidBookmark(_)
                | EngineError::OutsideHistory(_)
                | EngineError::Exists(_)
                | EngineError::InvalidFile(_)
                | EngineError::NotEmpty(_)
                | EngineError::Interrupted(_)
                | EngineError::TxConflict(_)
                | EngineError::UploadNotFound(_)
                | EngineError::UploadConflict(_)
                | EngineError::UploadExpired(_)
        )
    }
}

impl From<StoreError> for EngineError {
    /// A call the operation's budget did not allow is a limit the client can act on (read
    /// less per request); any other failure is the store's.
    fn from(e: StoreError) -> Self {
        match e.kind {
            crate::store::StoreErrorKind::OutOfCalls => EngineError::Limit(
                "the request needs more R2 calls than one Worker invocation may make (R2_CALLS limit: TWILL_MAX_R2_CALLS, \
                 1,000 by default as on the free plan; 10,000 on a paid plan). Read less per request: a LIMIT, an index, \
                 or pages of the data"
                    .into(),
            ),
            crate::store::StoreErrorKind::Failed => EngineError::Storage(e),
        }
    }
}

impl From<RecordError> for EngineError {
    fn from(e: RecordError) -> Self {
        EngineError::Corrupt(e.to_string())
    }
}

/// A turso error as SQLite would report it: its message, and the result code by kind.
pub(crate) fn sql_err(e: turso_core::LimboError) -> EngineError {
    use turso_core::LimboError as L;
    let message = e.to_string();
    // A page that does not parse is damaged storage, not the client's SQL.
    if matches!(e, L::Corrupt(_) | L::NotADB) {
        return EngineError::Corrupt(message);
    }
    if let Some(feature) = UnsupportedFeature::refused_in(&message) {
        return EngineError::NotAllowed(feature.refusal());
    }
    let code = match &e {
        L::Constraint(m) if m.starts_with("UNIQUE constraint failed") => SqliteCode::ConstraintUnique,
        L::Constraint(m) if m.starts_with("NOT NULL constraint failed") => SqliteCode::ConstraintNotNull,
        L::Constraint(m) if m.starts_with("CHECK constraint failed") => SqliteCode::ConstraintCheck,
        L::Constraint(_) => SqliteCode::Constraint,
        L::ForeignKeyConstraint(_) => SqliteCode::ConstraintForeignKey,
        L::Raise(turso_parser::ast::ResolveType::Abort | turso_parser::ast::ResolveType::Fail, _) => {
            SqliteCode::ConstraintTrigger
        }
        L::Raise(turso_parser::ast::ResolveType::Rollback, _) => SqliteCode::ConstraintTrigger,
        L::DatabaseFull => SqliteCode::Full,
        L::TooBig | L::InvalidBlobSize(_) => SqliteCode::TooBig,
        L::Busy | L::BusySnapshot | L::TableLocked => SqliteCode::Busy,
        L::ReadOnly => SqliteCode::ReadOnly,
        L::Interrupt => SqliteCode::Interrupt,
        L::InvalidColumnType => SqliteCode::Mismatch,
        L::TxTerminated | L::StatementsInProgress(_) => SqliteCode::Abort,
        _ => SqliteCode::Error,
    };
    // turso prefixes some messages where SQLite does not.
    let message = message
        .strip_prefix("Parse error: ")
        .map(|m| m.to_string())
        .unwrap_or(message);
    EngineError::Sql(SqlFailure { message, code })
}
