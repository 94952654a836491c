//! Where a database's objects live in the bucket. A database is a prefix; everything under
//! it is immutable except the manifest. See ARCHITECTURE.md.

/// Object keys for one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

/// Width of zero-padded sequence numbers, so lexical key order equals numeric order.
const SEQ_WIDTH: usize = 20;

impl Layout {
    /// `root` is a bucket-wide prefix (may be empty); `db_name` must already be validated.
    pub fn new(root: &str, db_name: &str) -> Self {
        Layout { prefix: format!("{}{db_name}/", Self::databases_prefix(root)) }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The database's name (the last part of its prefix).
    pub fn name(&self) -> &str {
        let without_slash = self.prefix.trim_end_matches('/');
        without_slash.rsplit('/').next().unwrap_or(without_slash)
    }

    /// The prefix every database under `root` starts with.
    pub fn databases_prefix(root: &str) -> String {
        format!("{root}db/")
    }

    /// The only mutable object: changed by etag compare-and-swap at checkpoints.
    pub fn manifest_key(&self) -> String {
        format!("{}manifest", self.prefix)
    }

    pub fn log_prefix(&self) -> String {
        format!("{}log/", self.prefix)
    }

    /// Commit record `seq` (1-based), created once by a create-only PUT.
    pub fn log_key(&self, seq: u64) -> String {
        format!("{}log/{:0width$}", self.prefix, seq, width = SEQ_WIDTH)
    }

    /// An immutable chunk object of checkpoint `generation`. The random `nonce` keeps keys
    /// of competing or abandoned checkpoint attempts apart.
    pub fn chunk_key(&self, generation: u64, index: u32, nonce: &str) -> String {
        format!("{}chunk/{:012}-{:08}-{}", self.prefix, generation, index, nonce)
    }

    pub fn chunk_prefix(&self) -> String {
        format!("{}chunk/", self.prefix)
    }

    /// Start-after key for listing the chunks of generations after `generation`.
    pub fn chunks_after(&self, generation: u64) -> String {
        format!("{}chunk/{:012}~", self.prefix, generation)
    }

    /// The history entry of checkpoint generation `generation` (immutable).
    pub fn history_entry_key(&self, generation: u64) -> String {
        format!("{}checkpoint/{:012}", self.prefix, generation)
    }

    pub fn history_prefix(&self) -> String {
        format!("{}checkpoint/", self.prefix)
    }

    /// A reference fork `child` keeps on this database: the chunks of ours it uses. Each
    /// attempt to create the fork writes its own (`nonce`), so racing attempts never
    /// overwrite each other's; a loser's reference only keeps chunks longer.
    pub fn fork_ref_key(&self, child: &str, nonce: &str) -> String {
        format!("{}forks/{}/{}", self.prefix, child, nonce)
    }

    /// The database prefix (`{root}db/{name}/`) a chunk key of any database belongs to.
    pub fn owner_prefix_of(chunk_key: &str) -> Option<&str> {
        chunk_key.find("/chunk/").map(|at| &chunk_key[..at + 1])
    }

    /// The layout of the database whose prefix is `prefix` (from [`Self::owner_prefix_of`]).
    pub fn of_prefix(prefix: &str) -> Self {
        Layout { prefix: prefix.to_string() }
    }

    /// Database `name` (already validated) under the same root as this one.
    pub fn sibling(&self, name: &str) -> Self {
        Layout::new(self.root(), name)
    }

    /// The root this database's prefix starts with (other databases of the bucket share it).
    fn root(&self) -> &str {
        let without_slash = &self.prefix[..self.prefix.len() - 1];
        let name_start = without_slash.rfind('/').map_or(0, |i| i + 1);
        &self.prefix[..name_start.saturating_sub(3)]
    }

    pub fn forks_prefix(&self) -> String {
        format!("{}forks/", self.prefix)
    }

    /// Every reference fork `child` keeps on this database.
    pub fn fork_refs_of(&self, child: &str) -> String {
        format!("{}forks/{}/", self.prefix, child)
    }

    /// Everything of an import upload session `id`: its state and its staged chunks.
    pub fn upload_prefix(&self, id: &str) -> String {
        format!("{}upload/{}/", self.prefix, id)
    }

    pub fn uploads_prefix(&self) -> String {
        format!("{}upload/", self.prefix)
    }

    /// The state of upload session `id` (an import in several requests). Kept apart from
    /// the uploads' chunks so that finding sessions lists only sessions.
    pub fn upload_session_key(&self, id: &UploadId) -> String {
        format!("{}sessions/{}", self.prefix, id.0)
    }

    pub fn upload_sessions_prefix(&self) -> String {
        format!("{}sessions/", self.prefix)
    }

    /// True if `key` is one of this database's objects (a fork's map also names its
    /// parents' chunks, which only their own database may delete).
    pub fn owns(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
    }

    /// The checkpoint generation a key produced by [`Self::chunk_key`] belongs to.
    pub fn chunk_generation_of(&self, key: &str) -> Option<u64> {
        let rest = key.strip_prefix(&self.chunk_prefix())?;
        let digits = rest.get(..12)?;
        if rest.as_bytes().get(12) != Some(&b'-') {
            return None;
        }
        digits.parse().ok()
    }

    /// Parses a key produced by [`Self::log_key`].
    pub fn log_seq_of(&self, key: &str) -> Option<u64> {
        let digits = key.strip_prefix(&self.log_prefix())?;
        if digits.len() != SEQ_WIDTH {
            return None;
        }
        digits.parse().ok()
    }
}

/// Names an import's upload session: `{start ms:013}-{random}`, so the time it began can be
/// read off its keys (a purge leaves uploads that may still be in progress alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadId(pub String);

impl UploadId {
    pub fn new(started_ms: u64, host: &dyn crate::host::Host) -> Self {
        UploadId(format!("{started_ms:013}-{}", crate::host::random_hex(host, 8)))
    }

    /// When the upload that wrote `key` (any key under an upload prefix, or a session's
    /// key) began; `None` for ids of another form (uploads from before ids carried their
    /// time).
    pub fn started_ms_of(layout: &Layout, key: &str) -> Option<u64> {
        let id = match key.strip_prefix(&layout.uploads_prefix()) {
            Some(rest) => rest.split_once('/')?.0,
            None => key.strip_prefix(&layout.upload_sessions_prefix())?,
        };
        Self::parse(id).ok()?.started_ms()
    }

    /// An id a client sent back: exactly the form [`Self::new`] makes.
    pub fn parse(id: &str) -> Result<Self, crate::error::EngineError> {
        let well_formed = (15..=46).contains(&id.len())
            && id.as_bytes()[13] == b'-'
            && id[..13].bytes().all(|b| b.is_ascii_digit())
            && id[14..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !well_formed {
            return Err(crate::error::EngineError::UploadNotFound(format!("{id:?} is not an upload id")));
        }
        Ok(UploadId(id.to_string()))
    }

    pub fn started_ms(&self) -> Option<u64> {
        self.0.split_once('-')?.0.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_numerically_and_parse_back() {
        let l = Layout::new("", "app");
        assert_eq!(l.log_key(7), "db/app/log/00000000000000000007");
        assert!(l.log_key(9) < l.log_key(10));
        assert_eq!(l.log_seq_of(&l.log_key(123)), Some(123));
        assert_eq!(l.log_seq_of("db/app/log/12"), None);
        assert_eq!(l.log_seq_of("db/other/log/00000000000000000001"), None);
        assert_eq!(l.chunk_generation_of(&l.chunk_key(42, 7, "abc")), Some(42));
        assert_eq!(l.chunk_generation_of("db/app/chunk/xyz"), None);
        assert_eq!(Layout::owner_prefix_of(&l.chunk_key(1, 2, "n")), Some("db/app/"));
        assert_eq!(Layout::new("r/", "x").sibling("y"), Layout::new("r/", "y"));
        assert_eq!(l.sibling("b"), Layout::new("", "b"));
        let upload = format!("{}chunk-00000003", l.upload_prefix("1700000000123-ab12"));
        assert_eq!(UploadId::started_ms_of(&l, &upload), Some(1_700_000_000_123));
        let session = l.upload_session_key(&UploadId::parse("1700000000123-ab12").unwrap());
        assert_eq!(UploadId::started_ms_of(&l, &session), Some(1_700_000_000_123));
        for bad in ["", "1700000000123", "1700000000123-", "1700000000123-AB", "170000000012x-ab", "../1700000000123-ab", "1700000000123-ab/.."] {
            assert_eq!(UploadId::parse(bad).unwrap_err().code(), "UPLOAD_NOT_FOUND", "{bad:?}");
        }
        assert_eq!(UploadId::started_ms_of(&l, &format!("{}chunk-1", l.upload_prefix("ab12cd"))), None);
    }
}
