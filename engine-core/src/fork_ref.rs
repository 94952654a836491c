//! A fork's reference on its parent (`db/P/forks/{child}`): the parent's chunks the fork's
//! first state uses. The parent's GC and deletion keep every chunk a reference names; the
//! reference goes when the fork is deleted. A fork of a fork references only its own
//! parent: the grandparent's chunks it uses are among those its parent's reference keeps.

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
