//! Every error the engine reports, each with a stable code for the wire.

use thiserror::Error;

use crate::log_record::RecordError;
use crate::store::StoreError;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EngineError {
    /// The SQL failed (syntax, constraint, type...). The database is unchanged.
    #[error("{0}")]
    Sql(String),
    /// The parameters do not fit the statement.
    #[error("{0}")]
    Params(String),
    /// The statement is not allowed through this interface (e.g. BEGIN/COMMIT, ATTACH).
    #[error("{0}")]
    NotAllowed(String),
    /// Another writer kept committing first; the transaction was not committed.
    #[error("write conflict: another writer committed first {attempts} times in a row; the transaction was not committed")]
    Conflict { attempts: u32 },
    /// The commit may or may not be durable (the store failed and the outcome could not be
    /// resolved). It was not acknowledged; read the data to find out.
    #[error("commit outcome unknown: {0}")]
    CommitUnknown(String),
    /// The store failed before anything was committed.
    #[error("storage unavailable: {0}")]
    Storage(#[from] StoreError),
    /// The durable state is not readable (a record failed validation).
    #[error("corrupt durable state: {0}")]
    Corrupt(String),
    /// A resource limit was hit.
    #[error("{0}")]
    Limit(String),
    /// The statement was interrupted (time or work budget).
    #[error("{0}")]
    Interrupted(String),
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
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Sql(_) => "SQL_ERROR",
            EngineError::Params(_) => "INVALID_PARAMS",
            EngineError::NotAllowed(_) => "STATEMENT_NOT_ALLOWED",
            EngineError::Conflict { .. } => "WRITE_CONFLICT",
            EngineError::CommitUnknown(_) => "COMMIT_OUTCOME_UNKNOWN",
            EngineError::Storage(_) => "STORAGE_UNAVAILABLE",
            EngineError::Corrupt(_) => "CORRUPT_STATE",
            EngineError::Limit(_) => "LIMIT_EXCEEDED",
            EngineError::Interrupted(_) => "QUERY_INTERRUPTED",
            EngineError::Internal(_) | EngineError::PagesMissing(_) | EngineError::BaseGone(_) => "INTERNAL_ERROR",
        }
    }

    /// True when the client's request was at fault (HTTP 4xx class).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            EngineError::Sql(_) | EngineError::Params(_) | EngineError::NotAllowed(_) | EngineError::Limit(_) | EngineError::Interrupted(_)
        )
    }
}

impl From<RecordError> for EngineError {
    fn from(e: RecordError) -> Self {
        EngineError::Corrupt(e.to_string())
    }
}

pub(crate) fn sql_err(e: turso_core::LimboError) -> EngineError {
    EngineError::Sql(e.to_string())
}
