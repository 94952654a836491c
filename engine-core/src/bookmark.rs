//! Bookmarks: the one way a commit is named, wherever a client meets one (the `bookmark`
//! of every answer, sessions, interactive transactions, history: `as_of`, restore, fork).
//!
//! A bookmark names a log position: the commit an answer reflects. Written `tw` followed
//! by the position as 16 lowercase hex digits, so bookmarks sort lexicographically in
//! commit order, never look like a time, and stay valid across checkpoints (positions
//! never change once written).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::EngineError;

const PREFIX: &str = "tw";
const DIGITS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bookmark(pub u64);

impl Bookmark {
    pub fn seq(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Bookmark {
    // Written into a buffer rather than with `{:016x}`: every answer carries a bookmark, and
    // padded formatting through `core::fmt` showed in a CPU profile of warm requests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; PREFIX.len() + DIGITS];
        text[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
        hex::encode_to_slice(self.0.to_be_bytes(), &mut text[PREFIX.len()..]).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for Bookmark {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            EngineError::InvalidBookmark(format!(
                "{s:?} is not a bookmark: bookmarks are \"{PREFIX}\" and {DIGITS} hex digits, as answers carry them in meta.bookmark"
            ))
        };
        let digits = s.strip_prefix(PREFIX).ok_or_else(bad)?;
        if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad());
        }
        u64::from_str_radix(digits, 16).map(Bookmark).map_err(|_| bad())
    }
}

impl Serialize for Bookmark {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bookmark {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookmarks_sort_in_commit_order_and_round_trip() {
        let seqs = [0u64, 1, 9, 10, 15, 16, 255, 256, 1 << 40, u64::MAX];
        let texts: Vec<String> = seqs.iter().map(|s| Bookmark(*s).to_string()).collect();
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(sorted, texts, "lexicographic order is commit order");
        for (s, t) in seqs.iter().zip(&texts) {
            assert_eq!(t.parse::<Bookmark>().unwrap(), Bookmark(*s));
        }
        assert_eq!(Bookmark(42).to_string(), "tw000000000000002a");
        for bad in ["", "tw", "tw2a", "TW000000000000002a", "tw000000000000002A", "000000000000002a", "2026-11-29T00:00:00Z"] {
            assert_eq!(bad.parse::<Bookmark>().unwrap_err().code(), "INVALID_BOOKMARK", "{bad}");
        }
    }
}
