//! Importing a SQL dump (the text `sqlite3 .dump` writes, or any script of statements):
//! its statements run, as they arrive, on a new empty database held in this isolate's
//! memory; that database's file is then imported like any SQLite file (uploaded in
//! chunks, checked, published as one snapshot record). Until the record lands nothing of
//! the dump is visible, after it all of it is.

use std::sync::Arc;

use futures::{Stream, StreamExt};

use crate::chunk_file::{CheckpointView, PageSource};
use crate::error::EngineError;
use crate::guard::{dump_statement, DumpStatement};
use crate::local::{ExecLimits, LocalDb};
use crate::sql_text::{NumberedStatement, StatementSplitter};
use crate::value::Statement;

use super::{Database, Imported};

/// The most WAL a dump may write while it is built (`SQL_IMPORT_SIZE`): the database a
/// dump makes lives in the isolate's memory (128 MB in all) until it is uploaded. Larger
/// dumps: make the file with `sqlite3 new.db < dump.sql` and import the file.
pub const MAX_SQL_IMPORT_BYTES: u64 = 48 << 20;
/// SQL text run per transaction of the build: the dirty pages of one transaction stay
/// within turso's page cache.
const SQL_BYTES_PER_TRANSACTION: usize = 1 << 20;
/// Pages per piece of the built file handed to the file import.
const PAGES_PER_PIECE: u32 = 64;

/// A new database has no checkpoint to fetch pages from.
struct NoCheckpoint;

#[async_trait::async_trait(?Send)]
impl PageSource for NoCheckpoint {
    async fn fetch_pages(&self, pages: &[u32]) -> Result<Vec<(u32, Arc<[u8]>)>, EngineError> {
        Err(EngineError::Internal(format!("a database built from a dump has no checkpoint, yet pages {pages:?} were missing")))
    }
}

/// The database a dump builds, before it is uploaded.
struct Build {
    local: LocalDb,
    statements: u64,
    /// SQL run in the open transaction.
    open_bytes: usize,
    max_bytes: u64,
    /// Each statement of a dump is bounded like one request.
    limits: ExecLimits,
}

impl Build {
    fn new(db: &Database) -> Result<Self, EngineError> {
        let empty = CheckpointView { page_size: 4096, page_count: 0, pages_per_chunk: 1, chunks: Vec::new() };
        let local = LocalDb::create(empty, db.cache.clone(), db.host.clone(), Default::default())?;
        local.start_request(&db.config.limits);
        local.exec_control("PRAGMA foreign_keys = OFF")?;
        Ok(Build { local, statements: 0, open_bytes: 0, max_bytes: db.config.sql_import_max_bytes, limits: db.config.limits })
    }

    async fn run(&mut self, statement: NumberedStatement) -> Result<(), EngineError> {
        if dump_statement(&statement.sql).map_err(|e| at(&statement, e))? == DumpStatement::Skip {
            return Ok(());
        }
        if self.open_bytes == 0 {
            self.local.exec_control("BEGIN")?;
        }
        self.local.renew_vm_budget(&self.limits);
        self.local.execute(&Statement::new(&statement.sql), &self.limits, &NoCheckpoint).await.map_err(|e| at(&statement, e))?;
        self.statements += 1;
        self.open_bytes += statement.sql.len().max(1);
        if self.open_bytes >= SQL_BYTES_PER_TRANSACTION {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), EngineError> {
        if self.open_bytes > 0 {
            self.local.exec_control("COMMIT")?;
            self.open_bytes = 0;
        }
        let written = self.local.wal_frames()? * self.local.page_size() as u64;
        if written > self.max_bytes {
            return Err(EngineError::Limit(format!(
                "a SQL dump may build at most {} bytes of database in the isolate's memory (SQL_IMPORT_SIZE limit): \
                 make the file with `sqlite3 new.db < dump.sql` and import the file instead",
                self.max_bytes
            )));
        }
        Ok(())
    }

    /// The built database as a SQLite file, a piece at a time.
    fn into_file(mut self) -> Result<impl Stream<Item = Result<Vec<u8>, EngineError>> + Unpin, EngineError> {
        self.commit()?;
        let frames = self.local.wal_frames()?;
        self.local.mark_durable(frames);
        let index = self.local.durable_wal_index()?;
        let (newest, page_count) = (index.newest_frame, index.db_size);
        let page_size = self.local.page_size() as usize;
        let local = self.local;
        let mut next_page: u32 = 1;
        Ok(futures::stream::poll_fn(move |_| {
            if next_page > page_count {
                return std::task::Poll::Ready(None);
            }
            let last = (next_page - 1).saturating_add(PAGES_PER_PIECE).min(page_count);
            let mut piece = vec![0u8; (last - next_page + 1) as usize * page_size];
            for page_no in next_page..=last {
                // A page no frame wrote stays zero (SQLite never reads it).
                let Some(frame_no) = newest.get(&page_no) else { continue };
                match local.frame_page(*frame_no) {
                    Ok(page) => {
                        let at = (page_no - next_page) as usize * page_size;
                        piece[at..at + page_size].copy_from_slice(&page);
                    }
                    Err(e) => return std::task::Poll::Ready(Some(Err(e))),
                }
            }
            next_page = last + 1;
            std::task::Poll::Ready(Some(Ok(piece)))
        }))
    }
}

/// `e`, naming the statement of the dump it came from.
fn at(statement: &NumberedStatement, e: EngineError) -> EngineError {
    let place = format!("statement {} (line {})", statement.number, statement.line);
    match e {
        EngineError::Sql(mut f) => {
            f.message = format!("{place}: {}", f.message);
            EngineError::Sql(f)
        }
        EngineError::NotAllowed(m) => EngineError::NotAllowed(format!("{place}: {m}")),
        EngineError::InvalidFile(m) => EngineError::InvalidFile(format!("{place}: {m}")),
        EngineError::Limit(m) => EngineError::Limit(format!("{place}: {m}")),
        e => e,
    }
}

impl Database {
    /// Imports the SQL dump `text` yields: refused if the database has tables, views or
    /// triggers, unless `replace`. The answer's `statements` counts what ran.
    pub async fn import_sql<S>(&mut self, mut text: S, replace: bool) -> Result<Imported, EngineError>
    where
        S: Stream<Item = Result<Vec<u8>, EngineError>> + Unpin,
    {
        if !replace {
            self.refuse_if_not_empty().await?;
        }
        let mut build = Build::new(self)?;
        let mut splitter = StatementSplitter::new();
        loop {
            let piece = text.next().await.transpose()?;
            let last = piece.is_none();
            for statement in splitter.push(piece.as_deref().unwrap_or(&[]), last)? {
                build.run(statement).await?;
            }
            if last {
                break;
            }
        }
        if build.statements == 0 {
            return Err(EngineError::InvalidFile("the dump holds no statements to run".into()));
        }
        let statements = build.statements;
        let file = build.into_file()?;
        let mut imported = self.import_file(file, replace).await?;
        imported.statements = Some(statements);
        Ok(imported)
    }
}
