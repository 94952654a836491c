//! Hrana batons: a stream's state, carried by the client from one HTTP request to the next
//! (which may reach any isolate), sealed so that it cannot be forged.
//!
//! A baton holds the database it belongs to, the stream's stored SQL texts, and where the
//! stream stands: idle, inside an interactive transaction (its replayable log, see
//! `engine_core::txn`), or in a transaction that was abandoned (every statement is refused
//! until the client ends it with ROLLBACK). It is JSON, base64url-encoded, then sealed with
//! HMAC-SHA256 under the Worker secret `TWILL_BATON_KEY`:
//! `twb2.<payload>.<mac>`. Without the key, batons are unsigned and carry no transactions.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use engine_core::txn::TxLog;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::wire::ApiError;

const LEGACY_PREFIX: &str = "twb1.";
const PREFIX: &str = "twb2.";
const UNSIGNED: &str = "unsigned";
/// Bytes of the MAC kept in the baton.
const MAC_BYTES: usize = 16;

/// An interactive transaction idle longer than this is over (TX_IDLE limit; the Worker
/// var `TWILL_TX_IDLE_MS` changes it). libSQL's server expires idle HTTP streams after 10 s.
pub const TX_IDLE_MS: f64 = 15_000.0;
/// An interactive transaction older than this is over (TX_LIFETIME limit).
pub const TX_LIFETIME_MS: f64 = 300_000.0;
/// The shortest `TWILL_BATON_KEY` accepted.
pub const MIN_KEY_BYTES: usize = 32;

/// Where a stream stands between requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Stream {
    Idle,
    InTransaction { tx: TxLog },
    /// The client believes a transaction is open that no longer exists: its statements are
    /// refused with this error until it sends ROLLBACK (or COMMIT, which fails).
    Abandoned { code: String, message: String },
}

/// Everything a baton carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    pub db: String,
    #[serde(default)]
    pub sql: BTreeMap<i32, String>,
    pub stream: Stream,
    /// When the stream was last used (ms since the Unix epoch).
    pub touched_ms: f64,
}

impl StreamState {
    pub fn new(db: &str, now_ms: f64) -> Self {
        StreamState { db: db.to_string(), sql: BTreeMap::new(), stream: Stream::Idle, touched_ms: now_ms }
    }
}

/// The key batons are sealed with (`TWILL_BATON_KEY`); without one, interactive
/// transactions are refused.
#[derive(Clone)]
pub struct BatonKey(Vec<u8>);

impl BatonKey {
    /// The key from the secret's text; refuses one too short to be a secret.
    pub fn from_secret(text: &str) -> Result<Self, ApiError> {
        if text.len() < MIN_KEY_BYTES {
            return Err(ApiError {
                status: 500,
                code: "MISCONFIGURED",
                message: format!("TWILL_BATON_KEY must be at least {MIN_KEY_BYTES} characters of random text"),
                sqlite_code: None,
            });
        }
        Ok(BatonKey(text.as_bytes().to_vec()))
    }

    fn hmac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(payload.as_bytes());
        mac
    }

    fn mac(&self, payload: &str) -> Vec<u8> {
        self.hmac(payload).finalize().into_bytes()[..MAC_BYTES].to_vec()
    }

    /// Whether `given` is this key's seal of `payload`, compared in constant time (a forger
    /// learns nothing from timing).
    fn verify(&self, payload: &str, given: &[u8]) -> bool {
        given.len() == MAC_BYTES && self.hmac(payload).verify_truncated_left(given).is_ok()
    }
}

fn invalid(message: &str) -> ApiError {
    ApiError::bad_request("HRANA_INVALID_BATON", message)
}

/// Seals a stream's state into a baton.
pub fn seal(state: &StreamState, key: Option<&BatonKey>) -> String {
    let json = serde_json::to_vec(state).expect("stream state serializes");
    let payload = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
    let mac = match key {
        Some(key) => URL_SAFE_NO_PAD.encode(key.mac(&payload)),
        None => UNSIGNED.to_string(),
    };
    format!("{payload}.{mac}")
}

/// Opens a baton for database `db`: checks its seal, that it belongs to `db`, and
/// whether its transaction has expired (then the stream is abandoned).
pub fn open(baton: &str, key: Option<&BatonKey>, db: &str, now_ms: f64, idle_ms: f64) -> Result<StreamState, ApiError> {
    if let Some(legacy) = baton.strip_prefix(LEGACY_PREFIX) {
        // Batons of the previous release: stored SQL only.
        let bytes = URL_SAFE_NO_PAD.decode(legacy).map_err(|_| invalid("the baton was not issued by this server"))?;
        let sql: BTreeMap<i32, String> =
            serde_json::from_slice(&bytes).map_err(|_| invalid("the baton was not issued by this server"))?;
        return Ok(StreamState { sql, ..StreamState::new(db, now_ms) });
    }
    let (payload, mac) = baton.rsplit_once('.').ok_or_else(|| invalid("the baton was not issued by this server"))?;
    let encoded = payload.strip_prefix(PREFIX).ok_or_else(|| invalid("the baton was not issued by this server"))?;
    let signed = match (key, mac) {
        (_, UNSIGNED) => false,
        (Some(key), mac) => {
            let given = URL_SAFE_NO_PAD.decode(mac).map_err(|_| invalid("the baton's seal is malformed"))?;
            if !key.verify(payload, &given) {
                return Err(invalid("the baton's seal does not match: it was altered, or sealed under another key"));
            }
            true
        }
        (None, _) => return Err(invalid("the baton is sealed, but this server has no TWILL_BATON_KEY to check it")),
    };
    let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| invalid("the baton was not issued by this server"))?;
    let mut state: StreamState = serde_json::from_slice(&bytes).map_err(|_| invalid("the baton was not issued by this server"))?;
    if state.db != db {
        return Err(invalid("the baton belongs to another database's stream"));
    }
    if let Stream::InTransaction { tx } = &state.stream {
        if !signed {
            return Err(invalid("an unsealed baton cannot carry a transaction"));
        }
        let expired = if now_ms - state.touched_ms > idle_ms {
            Some(format!("the transaction was idle for more than {} s (TX_IDLE limit) and was rolled back", idle_ms / 1000.0))
        } else if now_ms - tx.started_ms > TX_LIFETIME_MS {
            Some(format!("the transaction ran for more than {} s (TX_LIFETIME limit) and was rolled back", TX_LIFETIME_MS / 1000.0))
        } else {
            None
        };
        if let Some(message) = expired {
            state.stream = Stream::Abandoned { code: "TRANSACTION_EXPIRED".into(), message };
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx() -> TxLog {
        TxLog { begin: "BEGIN".into(), begin_seq: 3, seen_seq: 3, started_ms: 1000.0, seed: 7, entries: vec![] }
    }

    #[test]
    fn sealed_batons_round_trip_and_refuse_forgery() {
        let key = BatonKey::from_secret(&"k".repeat(32)).unwrap();
        let mut state = StreamState::new("app", 1000.0);
        state.sql.insert(1, "SELECT 1".into());
        state.stream = Stream::InTransaction { tx: tx() };
        let baton = seal(&state, Some(&key));
        assert_eq!(open(&baton, Some(&key), "app", 2000.0, TX_IDLE_MS).unwrap(), state);
        // Altered payload, other key, other database, missing key.
        let (payload, mac) = baton.rsplit_once('.').unwrap();
        let mut forged = payload.to_string();
        forged.push('A');
        assert!(open(&format!("{forged}.{mac}"), Some(&key), "app", 2000.0, TX_IDLE_MS).is_err());
        let other = BatonKey::from_secret(&"o".repeat(32)).unwrap();
        assert!(open(&baton, Some(&other), "app", 2000.0, TX_IDLE_MS).is_err());
        assert!(open(&baton, Some(&key), "other", 2000.0, TX_IDLE_MS).is_err());
        assert!(open(&baton, None, "app", 2000.0, TX_IDLE_MS).is_err());
        // A true seal cut short is no seal: only the whole tag is accepted.
        let whole = URL_SAFE_NO_PAD.decode(mac).unwrap();
        let cut = URL_SAFE_NO_PAD.encode(&whole[..4]);
        assert!(open(&format!("{payload}.{cut}"), Some(&key), "app", 2000.0, TX_IDLE_MS).is_err());
        // Unsigned batons never carry transactions.
        let unsigned = seal(&state, None);
        assert!(open(&unsigned, Some(&key), "app", 2000.0, TX_IDLE_MS).is_err());
        state.stream = Stream::Idle;
        assert!(open(&seal(&state, None), None, "app", 2000.0, TX_IDLE_MS).is_ok());
        assert!(BatonKey::from_secret("short").is_err());
    }

    #[test]
    fn idle_or_old_transactions_expire_into_an_abandoned_stream() {
        let key = BatonKey::from_secret(&"k".repeat(32)).unwrap();
        let state = StreamState { stream: Stream::InTransaction { tx: tx() }, ..StreamState::new("app", 1000.0) };
        let baton = seal(&state, Some(&key));
        let late = open(&baton, Some(&key), "app", 1000.0 + TX_IDLE_MS + 1.0, TX_IDLE_MS).unwrap();
        assert!(matches!(late.stream, Stream::Abandoned { ref code, .. } if code == "TRANSACTION_EXPIRED"));
    }
}
