//! TwillDB Edge's storage engine: SQL in turso_core, durability in an object store.
//!
//! Data path, top to bottom: [`database::Database`] (commit protocol, freshness) →
//! [`local::LocalDb`] (turso_core over in-memory files) and [`log_record`] (what a commit
//! is in the store) → [`store::ObjectStore`] (R2 in the Worker, [`mem_store`] natively).

pub mod bookmark;
pub mod cache;
pub mod catalog;
pub mod chunk_file;
pub mod database;
pub mod dst;
pub mod host;
pub mod error;
pub mod fork_ref;
pub mod guard;
pub mod history_entry;
pub mod io;
pub mod layout;
pub mod local;
pub mod log_record;
pub mod manifest;
pub mod mem_store;
pub mod script;
pub mod sql_text;
pub mod store;
pub mod txn;
pub mod unsupported;
pub mod value;

pub use bookmark::Bookmark;
pub use database::{Database, DbConfig, DbContext, DeleteMode, Deleted, Done, FileCheck, FileExport, Forked, SqlDump, SessionState, UPLOAD_MAX_BYTES, UPLOAD_PART_MAX_BYTES, Imported, HistoryWindow, ReadFrom, Reply, Request, Restored, TxResult, Work};
pub use error::EngineError;
pub use layout::Layout;
pub use store::ObjectStore;
pub use value::{Description, ExecStats, Params, SqlValue, Statement, StatementResult};
