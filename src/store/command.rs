//! What travels through the Raft log: every change to the store is one of these commands,
//! applied in log order by every member, deterministically.
use serde::{Deserialize, Serialize};

use super::types::{Member, Revision, TxnRequest, TxnResponse};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Put and DeleteRange travel as single-operation transactions.
    Txn(TxnRequest),
    Compact {
        revision: Revision,
    },
    /// `id` is chosen by the proposer, never at apply time, so every member agrees.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
}

/// What applying a command produced, sent back to whoever proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Txn(TxnResponse),
    Compacted {
        revision: Revision,
    },
    LeaseGranted {
        id: i64,
        ttl: i64,
        revision: Revision,
    },
    LeaseRevoked {
        revision: Revision,
    },
}

/// One client command inside a Raft entry, tagged so the proposing member can route the result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proposal {
    /// Proposer's member id in the high bits, its sequence number in the rest; 0 = nobody waits.
    pub id: u64,
    pub command: Command,
}

/// The context attached to a membership change entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberChange {
    pub member: Member,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail; an empty vector would only appear if a
    // type stopped being serializable, which the unit tests would catch.
    postcard::to_allocvec(value).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
