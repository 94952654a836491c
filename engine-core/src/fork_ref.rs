//! A fork's reference on a database whose chunks its first state uses
//! (`db/P/forks/{child}/{nonce}`): written at every database owning one of those chunks (a
//! fork of a fork references its grandparent too), before the fork's first record. That
//! database's GC keeps every chunk a reference names.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkRef {
    /// The fork's database name.
    pub child: String,
    /// The parent's log position the fork started from.
    pub seq: u64,
    pub created_ms: u64,
    /// The parent's chunk keys the fork uses.
    pub chunks: Vec<String>,
}
