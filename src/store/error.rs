//! The store's errors: variants a caller can act on, mapped to gRPC codes in `etcd_api` and to
//! Kubernetes Status errors by the API server.
use super::types::Revision;

/// Serializable so a leader's answer can travel back to the member that forwarded a request.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    #[error("mvcc: required revision has been compacted (compact revision {compact_revision})")]
    Compacted { compact_revision: Revision },
    #[error("mvcc: required revision is a future revision (current revision {current})")]
    FutureRevision { current: Revision },
    #[error("lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("request is too large: {size} bytes, the limit is {limit} bytes")]
    RequestTooLarge { size: usize, limit: usize },
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("key is not provided")]
    EmptyKey,
    #[error("not leader (leader is member {leader:x})")]
    NotLeader { leader: u64 },
    #[error("no leader elected yet")]
    NoLeader,
    #[error("database space exceeded: {0}")]
    NoSpace(String),
    #[error("the store is stopping")]
    Stopped,
    #[error("request timed out")]
    Timeout,
    #[error("member not found")]
    MemberNotFound,
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("storage I/O failed: {0}")]
    Io(String),
    #[error("external etcd: {0}")]
    External(String),
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => Error::from(io),
            sled::Error::Corruption { .. } => Error::Corrupt(format!("state database: {e}")),
            other => Error::Io(other.to_string()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            Error::NoSpace(e.to_string())
        } else {
            Error::Io(e.to_string())
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
