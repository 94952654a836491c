//! Interactive transactions that span requests, with no isolate holding them open.
//!
//! A transaction is carried between requests as its log: the `BEGIN` that opened it, the
//! statements it ran (with their parameters) and a digest of what each answered. The next
//! request, on whatever isolate, replays the log inside a new local transaction and checks
//! every digest before it runs anything new: if all match, the client's view of the
//! transaction holds on this state and it continues; if one differs, something it read
//! has changed and it ends with a conflict. `COMMIT` replays on the newest state and ships
//! the frames through the ordinary commit protocol, so a committed transaction behaves as
//! if it ran entirely at its commit point (serializable).
//!
//! Replays are deterministic: while a transaction runs, SQL sees its start time as "now"
//! and `random()`/`randomblob()` draw from a generator seeded by the transaction, so the
//! same statements on the same data give the same answers wherever they run.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::EngineError;
use crate::value::{Statement, StatementResult, SqlValue};

/// Statements one interactive transaction may run (TX_STATEMENTS limit).
pub const MAX_TX_STATEMENTS: usize = 1_000;
/// Bytes of SQL and parameters one interactive transaction may carry (TX_BYTES limit).
pub const MAX_TX_BYTES: usize = 1 << 20;

/// What a transaction's statement answered, condensed: equal digests mean equal answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultDigest(#[serde(with = "hex_bytes")] pub [u8; 16]);

/// One thing a transaction did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TxAction {
    Execute(Statement),
    /// Several statements without parameters (Hrana `sequence`).
    Sequence(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxEntry {
    pub action: TxAction,
    pub digest: ResultDigest,
}

/// An open interactive transaction, as carried between requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxLog {
    /// The statement that opened it (`BEGIN`, `BEGIN IMMEDIATE`, `BEGIN TRANSACTION READONLY`...).
    pub begin: String,
    /// The log position it began on (its bookmark).
    pub begin_seq: u64,
    /// The newest log position any of its requests ran on: later requests run on a state
    /// at least this new, so its reads never go back in time.
    pub seen_seq: u64,
    /// When it began (ms since the Unix epoch): SQL's "now" for all of it.
    pub started_ms: f64,
    /// Seeds `random()` and `randomblob()` for all of it.
    pub seed: u64,
    pub entries: Vec<TxEntry>,
}

impl TxLog {
    /// Bytes of SQL and parameters the log carries.
    pub fn weight(&self) -> usize {
        self.begin.len()
            + self
                .entries
                .iter()
                .map(|e| match &e.action {
                    TxAction::Execute(s) => s.weight(),
                    TxAction::Sequence(sql) => sql.len(),
                } + 16)
                .sum::<usize>()
    }

    /// Refuses a log past the transaction limits.
    pub fn check_limits(&self) -> Result<(), EngineError> {
        if self.entries.len() > MAX_TX_STATEMENTS {
            return Err(EngineError::Limit(format!(
                "an interactive transaction may run at most {MAX_TX_STATEMENTS} statements (TX_STATEMENTS limit); it was rolled back"
            )));
        }
        if self.weight() > MAX_TX_BYTES {
            return Err(EngineError::Limit(format!(
                "an interactive transaction may carry at most {MAX_TX_BYTES} bytes of SQL and parameters (TX_BYTES limit); it was rolled back"
            )));
        }
        Ok(())
    }
}

/// How a script treats a transaction it leaves open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenAtEnd {
    /// Roll it back and report the steps from its `BEGIN` on as rolled back.
    #[default]
    RollBack,
    /// Roll it back locally and hand its log to the caller, who carries it to the next
    /// request (Hrana's baton).
    Carry,
}

/// The digest of a statement's outcome: its result, or its failure.
pub fn digest_outcome(outcome: Result<&StatementResult, &EngineError>) -> ResultDigest {
    let mut h = Sha256::new();
    match outcome {
        Ok(r) => {
            h.update(b"ok");
            for c in &r.columns {
                h.update((c.len() as u64).to_le_bytes());
                h.update(c.as_bytes());
            }
            h.update((r.rows.len() as u64).to_le_bytes());
            for row in &r.rows {
                for v in row {
                    digest_value(&mut h, v);
                }
            }
            h.update(r.rows_affected.to_le_bytes());
            // Only what the statement itself produced: the connection's last rowid before
            // it depends on whatever ran on that isolate earlier.
            h.update(r.last_insert_rowid.unwrap_or(0).to_le_bytes());
        }
        Err(e) => {
            h.update(b"err");
            h.update(e.code().as_bytes());
            h.update(e.to_string().as_bytes());
        }
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    ResultDigest(out)
}

/// The digest of a sequence that ran (they answer nothing but success or failure).
pub fn digest_sequence(outcome: Result<(), &EngineError>) -> ResultDigest {
    match outcome {
        Ok(()) => digest_outcome(Ok(&StatementResult::default())),
        Err(e) => digest_outcome(Err(e)),
    }
}

fn digest_value(h: &mut Sha256, v: &SqlValue) {
    match v {
        SqlValue::Null => h.update([0u8]),
        SqlValue::Integer(i) => {
            h.update([1u8]);
            h.update(i.to_le_bytes());
        }
        SqlValue::Real(f) => {
            h.update([2u8]);
            h.update(f.to_bits().to_le_bytes());
        }
        SqlValue::Text(t) => {
            h.update([3u8]);
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        SqlValue::Blob(b) => {
            h.update([4u8]);
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
        bytes.try_into().map_err(|_| serde::de::Error::custom("a digest is 16 bytes"))
    }
}
