//! Importing a SQLite database file: streamed into chunk objects under
//! `upload/{id}/` in bounded memory (six 256 KiB chunks at most in flight), checked, then
//! published as one snapshot record. Until that record lands nothing of the file is
//! visible; after it, all of it is. Replacing a database that has data is a commit like any
//! other, so it stays in history and can be restored away.

use futures::future::join_all;
use futures::{Stream, StreamExt};

use crate::bookmark::Bookmark;
use crate::chunk_file::CheckpointView;
use crate::error::EngineError;
use crate::layout::UploadId;
use crate::log_record::{Snapshot, SnapshotOrigin};
use crate::store::{PutCondition, PutOutcome};
use crate::value::{SqlValue, Statement};

use super::{Database, Image, ReadFrom, Reply, Request, Work};

/// Bytes per chunk object of an imported file (pages per chunk follow from the page size).
pub(super) const IMPORT_CHUNK_BYTES: usize = 256 << 10;
/// Files up to this size get SQLite's `quick_check` by default (their pages are still in
/// the cache); larger ones a structural check: the header, the schema, every root page.
pub const QUICK_CHECK_MAX_BYTES: u64 = 32 << 20;

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// The import's commit.
    pub bookmark: Bookmark,
    /// The state before it (restore it to undo the import).
    pub previous: Bookmark,
    pub bytes: u64,
    pub pages: u32,
    /// Which check the file passed.
    pub check: FileCheck,
    /// For a SQL dump: how many of its statements ran.
    pub statements: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileCheck {
    /// SQLite's `PRAGMA quick_check` over every page.
    QuickCheck,
    /// The header, the schema, and the root page of every table and index.
    Structure,
}

/// Whether the bytes a [`ChunkWriter`] gets begin a SQLite file (their header is checked
/// and set to WAL mode) or continue one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileStart {
    Here,
    Elsewhere,
}

/// Bytes streamed into chunk objects of [`IMPORT_CHUNK_BYTES`], at most six PUTs in flight.
pub(super) struct ChunkWriter {
    start: FileStart,
    buffer: Vec<u8>,
    pending: Vec<(String, Vec<u8>)>,
    keys: Vec<String>,
    bytes: u64,
    /// The file's header, checked, if these bytes begin it.
    header: Option<FileHeader>,
    /// Chunks are kept in the cache while the bytes so far are at most this.
    cache_up_to: u64,
}

/// What a [`ChunkWriter`] stored.
pub(super) struct WrittenChunks {
    pub keys: Vec<String>,
    pub bytes: u64,
    /// The file's header, checked, if the bytes began a file.
    pub header: Option<FileHeader>,
}

/// A SQLite file's header (its first 100 bytes, or all of a shorter file) that this
/// database can take, and the page size it declares.
pub(super) struct FileHeader {
    bytes: Vec<u8>,
    page_size: u32,
}

impl FileHeader {
    pub(super) fn check(bytes: &[u8]) -> Result<FileHeader, EngineError> {
        let page_size = header_page_size(bytes)?;
        Ok(FileHeader { bytes: bytes[..bytes.len().min(100)].to_vec(), page_size })
    }
}

impl ChunkWriter {
    pub(super) fn new(start: FileStart, cache_up_to: u64) -> Self {
        ChunkWriter {
            start,
            buffer: Vec::with_capacity(IMPORT_CHUNK_BYTES),
            pending: Vec::new(),
            keys: Vec::new(),
            bytes: 0,
            header: None,
            cache_up_to,
        }
    }

    /// Chunk objects written or being written: the ones to delete if the upload fails.
    pub(super) fn attempted(&self) -> usize {
        self.keys.len() + self.pending.len() + 6
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes + self.buffer.len() as u64
    }

    /// Adds `piece`; stores every chunk it fills. `key_of` names chunk `i`.
    pub(super) async fn push(&mut self, db: &Database, piece: &[u8], key_of: impl Fn(usize) -> String) -> Result<(), EngineError> {
        // Fill the chunk being built a slice at a time: pieces may be large, and nothing
        // is moved more than once.
        let mut rest = piece;
        while !rest.is_empty() {
            let room = IMPORT_CHUNK_BYTES - self.buffer.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buffer.extend_from_slice(now);
            rest = later;
            self.check_header(false)?;
            if self.buffer.len() == IMPORT_CHUNK_BYTES {
                self.seal(db, &key_of).await?;
            }
        }
        Ok(())
    }

    /// Stores what is left; returns every chunk in order.
    pub(super) async fn finish(&mut self, db: &Database, key_of: impl Fn(usize) -> String) -> Result<WrittenChunks, EngineError> {
        self.check_header(true)?;
        if !self.buffer.is_empty() {
            self.seal(db, &key_of).await?;
        }
        let pending = std::mem::take(&mut self.pending);
        self.keys.extend(db.put_chunks(pending).await?);
        Ok(WrittenChunks { keys: self.keys.clone(), bytes: self.bytes, header: self.header.take() })
    }

    fn check_header(&mut self, at_end: bool) -> Result<(), EngineError> {
        let first = self.keys.is_empty() && self.pending.is_empty();
        if self.start == FileStart::Here && first && self.header.is_none() && (self.buffer.len() >= 100 || (at_end && !self.buffer.is_empty())) {
            self.header = Some(FileHeader::check(&self.buffer)?);
        }
        Ok(())
    }

    async fn seal(&mut self, db: &Database, key_of: &impl Fn(usize) -> String) -> Result<(), EngineError> {
        let mut chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(IMPORT_CHUNK_BYTES));
        let first = self.keys.is_empty() && self.pending.is_empty();
        if self.start == FileStart::Here && first {
            // The engine keeps every database in WAL mode.
            chunk[18] = 2;
            chunk[19] = 2;
        }
        self.bytes += chunk.len() as u64;
        let key = key_of(self.keys.len() + self.pending.len());
        if self.bytes <= self.cache_up_to {
            db.cache_import_pages(&key, &chunk, self.header.as_ref().map_or(4096, |h| h.page_size));
        }
        self.pending.push((key, chunk));
        if self.pending.len() == db.config.fetch_concurrency.max(1) {
            let pending = std::mem::take(&mut self.pending);
            self.keys.extend(db.put_chunks(pending).await?);
        }
        Ok(())
    }
}

pub(super) fn invalid(why: impl Into<String>) -> EngineError {
    EngineError::InvalidFile(why.into())
}

/// The database size in pages a SQLite header declares, where SQLite would trust it (the
/// size is non-zero and "version-valid-for" equals the change counter).
fn declared_pages(header: &[u8]) -> Option<u32> {
    let size = header_word(header, 28)?;
    (size > 0 && header_word(header, 92)? == header_word(header, 24)?).then_some(size)
}

/// The big-endian 4-byte field of a SQLite header at offset `at`, if the header holds it.
fn header_word(header: &[u8], at: usize) -> Option<u32> {
    header.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The page size a SQLite header declares, if the header is one this database can take.
fn header_page_size(header: &[u8]) -> Result<u32, EngineError> {
    if header.len() < 100 || &header[..16] != b"SQLite format 3\0" {
        return Err(invalid("not a SQLite database file (the header does not start with \"SQLite format 3\")"));
    }
    let raw = u16::from_be_bytes([header[16], header[17]]) as u32;
    let page_size = if raw == 1 { 65536 } else { raw };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(invalid(format!("the header declares page size {raw}, which SQLite never writes")));
    }
    if header[20] != 0 {
        return Err(invalid(format!(
            "pages reserve {} bytes (an encrypted or checksummed file); only files without reserved bytes can be imported",
            header[20]
        )));
    }
    refuse_what_turso_cannot_keep(header)?;
    Ok(page_size)
}

/// Valid SQLite files that turso cannot open, or could open only read-only, are refused
/// with what to do instead: it would otherwise call them damaged, or import them into a
/// database that refuses every write.
fn refuse_what_turso_cannot_keep(header: &[u8]) -> Result<(), EngineError> {
    // The caller has checked that the header holds all 100 bytes.
    let word = |at: usize| header_word(header, at).unwrap_or(0);
    let dump_instead = "import an SQL dump of it instead (`sqlite3 file.db .dump`)";
    let encoding = match word(56) {
        0 | 1 => None,
        2 => Some("UTF-16 (little-endian)"),
        3 => Some("UTF-16 (big-endian)"),
        other => return Err(invalid(format!("the header declares text encoding {other}, which SQLite never writes"))),
    };
    if let Some(encoding) = encoding {
        return Err(invalid(format!(
            "the file stores its text as {encoding}; only UTF-8 databases can be imported: {dump_instead}, which carries the text as UTF-8"
        )));
    }
    if word(52) != 0 {
        let mode = if word(64) != 0 { "INCREMENTAL" } else { "FULL" };
        return Err(invalid(format!(
            "the file uses auto_vacuum = {mode}, whose pointer-map pages turso, the SQL engine, does not maintain: turn it off first \
             (`sqlite3 file.db 'PRAGMA auto_vacuum = NONE; VACUUM;'`) or {dump_instead}"
        )));
    }
    Ok(())
}

impl Database {
    /// Imports the SQLite file `source` yields. Refused if the database has tables, views
    /// or triggers, unless `replace`.
    pub async fn import_file<S>(&mut self, mut source: S, replace: bool) -> Result<Imported, EngineError>
    where
        S: Stream<Item = Result<Vec<u8>, EngineError>> + Unpin,
    {
        if !replace {
            self.refuse_if_not_empty().await?;
        }
        let began_at = self.applied_seq;
        let upload = self.layout.upload_prefix(&UploadId::new(self.now_ms() as u64, self.host.as_ref()).0);
        let mut writer = ChunkWriter::new(FileStart::Here, self.config.quick_check_max_bytes);
        let uploaded = async {
            while let Some(piece) = source.next().await.transpose()? {
                writer.push(self, &piece, |i| format!("{upload}chunk-{i:08}")).await?;
            }
            writer.finish(self, |i| format!("{upload}chunk-{i:08}")).await
        }
        .await;
        let result = match uploaded {
            Ok(written) => match written.header {
                Some(header) => self.publish_import(written.keys, header, written.bytes, replace, began_at).await,
                None => Err(invalid("the file is empty")),
            },
            Err(e) => Err(e),
        };
        // Nothing references the upload unless the commit's outcome is unknown (its record
        // may have landed, naming these chunks): then they stay (if it did not land, they
        // are left over until a purge of the database).
        if result.as_ref().is_err_and(|e| !matches!(e, EngineError::CommitUnknown(_))) {
            let keys: Vec<String> = (0..writer.attempted()).map(|i| format!("{upload}chunk-{i:08}")).collect();
            let _ = self.store.delete_many(&keys).await;
        }
        result
    }

    pub(super) async fn put_chunks(&self, chunks: Vec<(String, Vec<u8>)>) -> Result<Vec<String>, EngineError> {
        let puts = chunks.into_iter().map(|(key, body)| {
            let store = self.store.clone();
            async move {
                match store.put(&key, &body, PutCondition::CreateOnly).await? {
                    PutOutcome::Stored(_) => Ok(key),
                    PutOutcome::PreconditionFailed => {
                        Err(EngineError::Internal(format!("upload chunk {key} already exists (a repeated upload id)")))
                    }
                }
            }
        });
        join_all(puts).await.into_iter().collect()
    }

    /// Keeps the pages of a chunk in the cache, so that checking them reads nothing.
    fn cache_import_pages(&self, key: &str, chunk: &[u8], page_size: u32) {
        let key: std::sync::Arc<str> = std::sync::Arc::from(key);
        for (i, page) in chunk.chunks_exact(page_size as usize).enumerate() {
            self.cache.insert((key.clone(), i as u32), page.into());
        }
    }

    /// Checks the uploaded `chunks` (a file of `bytes` that begins with `header`) and
    /// publishes them as one commit.
    pub(super) async fn publish_import(
        &mut self,
        chunks: Vec<String>,
        header: FileHeader,
        bytes: u64,
        replace: bool,
        began_at: u64,
    ) -> Result<Imported, EngineError> {
        let FileHeader { bytes: header, page_size } = header;
        let header = header.as_slice();
        if bytes % page_size as u64 != 0 {
            return Err(invalid(format!("the file is {bytes} bytes, not a whole number of {page_size}-byte pages")));
        }
        let pages = u32::try_from(bytes / page_size as u64).map_err(|_| invalid("the file has more pages than SQLite allows"))?;
        if let Some(declared) = declared_pages(header).filter(|d| *d > pages) {
            return Err(invalid(format!(
                "the file holds {pages} pages but its header declares {declared}: it is cut short (an upload missing its end?)"
            )));
        }
        let snapshot = Snapshot {
            page_count: pages,
            pages_per_chunk: (IMPORT_CHUNK_BYTES as u32 / page_size).max(1),
            chunks,
            origin: SnapshotOrigin::Import,
        };
        let check = self.check_imported(&snapshot, page_size, bytes).await?;
        let (previous, bookmark) = self.commit_snapshot(snapshot, Vec::new(), page_size, !replace, Some(began_at)).await?;
        Ok(Imported { bookmark, previous, bytes, pages, check, statements: None })
    }

    /// Opens the uploaded image read-only and checks it, before anyone can see it.
    async fn check_imported(&self, snapshot: &Snapshot, page_size: u32, bytes: u64) -> Result<FileCheck, EngineError> {
        let view = CheckpointView {
            page_size,
            page_count: snapshot.page_count,
            pages_per_chunk: snapshot.pages_per_chunk,
            chunks: snapshot.chunks.iter().map(|k| std::sync::Arc::from(k.as_str())).collect(),
        };
        let mut image = self.read_only_on(Image::read_only(view), self.applied_seq);
        image.local = Some(image.create_local().await.map_err(not_a_database)?);
        if bytes <= self.config.quick_check_max_bytes {
            let rows = image.read_rows("PRAGMA quick_check").await.map_err(not_a_database)?;
            return match rows.as_slice() {
                [row] if row.first() == Some(&SqlValue::Text("ok".into())) => Ok(FileCheck::QuickCheck),
                _ => Err(invalid(format!("SQLite's quick_check found damage: {rows:?}"))),
            };
        }
        // Every table and index must start at a page inside the file, and every table's
        // first rows must read.
        let schema = image
            .read_rows("SELECT type, name, rootpage FROM sqlite_schema WHERE rootpage > 0")
            .await
            .map_err(not_a_database)?;
        for row in schema {
            let [SqlValue::Text(kind), SqlValue::Text(name), SqlValue::Integer(root)] = row.as_slice() else {
                return Err(invalid("the schema table holds a malformed row"));
            };
            if *root as u64 > snapshot.page_count as u64 {
                return Err(invalid(format!("{name} starts at page {root}, outside the file's {} pages", snapshot.page_count)));
            }
            if kind == "table" {
                let probe = format!("SELECT * FROM \"{}\" LIMIT 1", name.replace('"', "\"\""));
                image.read_rows(&probe).await.map_err(not_a_database)?;
            }
        }
        Ok(FileCheck::Structure)
    }

    /// Rows of one read-only statement on this database.
    pub(super) async fn read_rows(&mut self, sql: &str) -> Result<Vec<Vec<SqlValue>>, EngineError> {
        let request = Request { work: Work::Transaction(vec![Statement::new(sql)]), read_from: ReadFrom::Latest };
        let done = self.perform(vec![request]).await.pop().unwrap_or_else(|| Err(EngineError::Internal("no reply".into())))?;
        match done.reply {
            Reply::Transaction(mut results) => Ok(results.pop().map(|r| r.rows).unwrap_or_default()),
            Reply::Script(_) => Err(EngineError::Internal("a read got a script's reply".into())),
        }
    }

    /// Refuses (`DATABASE_NOT_EMPTY`) if the newest state has any table, view or trigger.
    pub(super) async fn refuse_if_not_empty(&mut self) -> Result<(), EngineError> {
        let rows = self.read_rows("SELECT count(*) FROM sqlite_schema").await?;
        match rows.first().and_then(|r| r.first()) {
            Some(SqlValue::Integer(0)) => Ok(()),
            _ => Err(EngineError::NotEmpty(
                "the database already has tables: import with replace=true to replace it (a commit in its history, which can be restored away)".into(),
            )),
        }
    }
}

/// A file that does not open or read as a database is the client's, not our corruption.
fn not_a_database(e: EngineError) -> EngineError {
    match e {
        EngineError::Corrupt(why) => invalid(format!("the file is not a valid SQLite database: {why}")),
        EngineError::Sql(f) => invalid(format!("the file is not a valid SQLite database: {}", f.message)),
        EngineError::NotAllowed(why) => invalid(format!("the file cannot be imported: {why}")),
        e => e,
    }
}
