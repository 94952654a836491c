//! The IO turso_core runs on: in-memory files (the isolate has no filesystem), the host's
//! clock and randomness (JS `Date` and `crypto` in the Worker; turso's default clock uses
//! `std::time::Instant`, which panics on wasm32; a seeded host in simulation), and
//! `sleep`/`yield_now` that never block a single-threaded isolate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::host::Host;
use crate::mem_store::SplitMix64;
use turso_core::io::FileSyncType;
use turso_core::{Buffer, Clock, Completion, CompletionError, File, MemoryIO, MonotonicInstant, OpenFlags, WallClockInstant, IO};

/// In-memory files keyed by path. Files outlive the turso `Database` that opened them, so
/// the engine can reopen the same bytes (e.g. after discarding unshipped WAL frames).
pub struct EngineIo {
    host: Arc<dyn Host>,
    /// While an interactive transaction runs, SQL's randomness comes from a generator
    /// seeded by the transaction, so a replay draws the same values.
    sql_random: Mutex<Option<SplitMix64>>,
    files: Mutex<HashMap<String, Arc<dyn File>>>,
    file_factory: MemoryIO,
    stalled: StalledReads,
    wal_limit: Arc<WalWriteLimit>,
}

/// How far turso may write the WAL: the bound on what one request writes (see
/// `LocalDb::limit_writes`). The WAL is in the isolate's memory until a commit ships it, so
/// an unbounded write (`INSERT ... SELECT randomblob(1e6) FROM ...` a few hundred times)
/// would take the isolate past its 128 MB and kill it with everything cached in it. A write
/// that would end past the bound fails with SQLITE_FULL instead, and the request is undone.
pub struct WalWriteLimit {
    /// Byte offset in the WAL file past which writes fail (`u64::MAX`: no bound).
    end: AtomicU64,
    /// A write failed at the bound since [`Self::take_exceeded`] last asked.
    exceeded: AtomicBool,
}

impl WalWriteLimit {
    fn new() -> Self {
        WalWriteLimit { end: AtomicU64::new(u64::MAX), exceeded: AtomicBool::new(false) }
    }

    pub fn set_end(&self, end: Option<u64>) {
        self.end.store(end.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.exceeded.store(false, Ordering::Relaxed);
    }

    /// Whether a write failed at the bound (and forgets it).
    pub fn take_exceeded(&self) -> bool {
        self.exceeded.swap(false, Ordering::Relaxed)
    }

    fn admit(&self, pos: u64, len: u64) -> turso_core::Result<()> {
        if pos.saturating_add(len) > self.end.load(Ordering::Relaxed) {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(turso_core::LimboError::DatabaseFull);
        }
        Ok(())
    }
}

/// A WAL file whose writes stop at the [`WalWriteLimit`].
struct LimitedWal {
    file: Arc<dyn File>,
    limit: Arc<WalWriteLimit>,
}

impl File for LimitedWal {
    fn lock_file(&self, exclusive: bool) -> turso_core::Result<()> {
        self.file.lock_file(exclusive)
    }
    fn unlock_file(&self) -> turso_core::Result<()> {
        self.file.unlock_file()
    }
    fn pread(&self, pos: u64, c: Completion) -> turso_core::Result<Completion> {
        self.file.pread(pos, c)
    }
    fn pwrite(&self, pos: u64, buffer: Arc<Buffer>, c: Completion) -> turso_core::Result<Completion> {
        self.limit.admit(pos, buffer.len() as u64)?;
        self.file.pwrite(pos, buffer, c)
    }
    fn pwritev(&self, pos: u64, buffers: Vec<Arc<Buffer>>, c: Completion) -> turso_core::Result<Completion> {
        self.limit.admit(pos, buffers.iter().map(|b| b.len() as u64).sum())?;
        self.file.pwritev(pos, buffers, c)
    }
    fn sync(&self, c: Completion, sync_type: FileSyncType) -> turso_core::Result<Completion> {
        self.file.sync(c, sync_type)
    }
    fn size(&self) -> turso_core::Result<u64> {
        self.file.size()
    }
    fn truncate(&self, len: u64, c: Completion) -> turso_core::Result<Completion> {
        self.file.truncate(len, c)
    }
    fn has_hole(&self, pos: usize, len: usize) -> turso_core::Result<bool> {
        self.file.has_hole(pos, len)
    }
    fn punch_hole(&self, pos: usize, len: usize) -> turso_core::Result<()> {
        self.file.punch_hole(pos, len)
    }
}

/// A read of the database file that waits for pages that are not cached.
pub struct StalledRead {
    /// Byte offset in the file; the length is the completion's buffer (clipped to the file).
    pub pos: u64,
    pub completion: Completion,
}

/// Reads of pages that are not cached. While the engine steps a statement, it fetches
/// their pages and completes them, and the statement goes on where it stopped (see
/// `LocalDb::run_prepared`). Where turso instead waits for I/O by spinning on
/// [`IO::step`] (opening, preparing, BEGIN/COMMIT), the next step fails them: the code
/// that waited gets an error, the engine fetches the pages and runs the request again.
pub type StalledReads = Arc<Mutex<Vec<StalledRead>>>;

impl EngineIo {
    pub fn new(host: Arc<dyn Host>) -> Self {
        EngineIo {
            host,
            sql_random: Mutex::new(None),
            files: Mutex::new(HashMap::new()),
            file_factory: MemoryIO::new(),
            stalled: Default::default(),
            wal_limit: Arc::new(WalWriteLimit::new()),
        }
    }

    /// The bound on turso's writes to the WAL files this IO opens.
    pub fn wal_limit(&self) -> &WalWriteLimit {
        &self.wal_limit
    }

    /// Seeds SQL's randomness (`None`: the host's again).
    pub fn seed_sql_random(&self, seed: Option<u64>) {
        *self.sql_random.lock().unwrap_or_else(|p| p.into_inner()) = seed.map(SplitMix64);
    }

    fn random_fill(&self, dest: &mut [u8]) {
        match self.sql_random.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(rng) => {
                for chunk in dest.chunks_mut(8) {
                    let bytes = rng.next_u64().to_le_bytes();
                    chunk.copy_from_slice(&bytes[..chunk.len()]);
                }
            }
            None => self.host.fill_random(dest),
        }
    }

    /// Where the database file puts reads it cannot serve.
    pub fn stalled_reads(&self) -> StalledReads {
        self.stalled.clone()
    }

    /// The file at `path`, if it was ever opened.
    pub fn file(&self, path: &str) -> Option<Arc<dyn File>> {
        self.files.lock().ok()?.get(path).cloned()
    }

    /// Makes `path` name `file` (the database file is ours, not an in-memory one).
    pub fn register(&self, path: &str, file: Arc<dyn File>) {
        if let Ok(mut files) = self.files.lock() {
            files.insert(path.to_string(), file);
        }
    }

    /// Makes `new_path` name the same file as `old_path` (used to reopen a database under
    /// a fresh path: turso keeps one `Database` per path in a process-wide registry).
    pub fn alias(&self, old_path: &str, new_path: &str) {
        if let Ok(mut files) = self.files.lock() {
            if let Some(f) = files.get(old_path).cloned() {
                files.insert(new_path.to_string(), f);
            }
        }
    }

    pub fn forget(&self, path: &str) {
        if let Ok(mut files) = self.files.lock() {
            files.remove(path);
        }
    }
}

impl Clock for EngineIo {
    fn current_time_monotonic(&self) -> MonotonicInstant {
        MonotonicInstant::from_nanos((self.host.now_ms() * 1_000_000.0) as u128)
    }

    fn current_time_wall_clock(&self) -> WallClockInstant {
        let ms = self.host.now_ms();
        let secs = (ms / 1000.0).floor();
        WallClockInstant { secs: secs as i64, micros: ((ms - secs * 1000.0) * 1000.0) as u32 }
    }
}

impl IO for EngineIo {
    fn open_file(&self, path: &str, flags: OpenFlags, direct: bool) -> turso_core::Result<Arc<dyn File>> {
        let mut files = self
            .files
            .lock()
            .map_err(|_| turso_core::LimboError::InternalError("engine io lock poisoned".into()))?;
        if let Some(f) = files.get(path) {
            return Ok(f.clone());
        }
        let mut f = self.file_factory.open_file(path, flags, direct)?;
        if path.ends_with("-wal") {
            f = Arc::new(LimitedWal { file: f, limit: self.wal_limit.clone() });
        }
        files.insert(path.to_string(), f.clone());
        Ok(f)
    }

    fn remove_file(&self, path: &str) -> turso_core::Result<()> {
        self.forget(path);
        self.file_factory.remove_file(path)
    }

    fn file_id(&self, path: &str) -> turso_core::Result<turso_core::io::FileId> {
        Ok(turso_core::io::FileId::from_path_hash(path))
    }

    fn generate_random_number(&self) -> i64 {
        let mut b = [0u8; 8];
        self.random_fill(&mut b);
        i64::from_le_bytes(b)
    }

    fn fill_bytes(&self, dest: &mut [u8]) {
        self.random_fill(dest);
    }

    fn step(&self) -> turso_core::Result<()> {
        let stalled = std::mem::take(&mut *self.stalled.lock().unwrap_or_else(|p| p.into_inner()));
        for StalledRead { completion: c, .. } in stalled {
            c.error(CompletionError::IOError(std::io::ErrorKind::WouldBlock, "page not cached"));
        }
        Ok(())
    }

    fn yield_now(&self) {}

    fn sleep(&self, _duration: std::time::Duration) {}
}
