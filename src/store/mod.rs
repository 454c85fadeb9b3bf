//! The replicated MVCC key-value store that replaces etcd. It knows bytes, revisions and
//! leases — nothing about Kubernetes. `Store` is the async handle everything else uses;
//! behind it one Raft thread owns consensus, the log and applies (see `raft`).
pub mod bootstrap;
pub mod command;
pub mod compactor;
pub mod datastore;
pub mod error;
pub mod etcd_api;
pub mod external;
pub mod mvcc;
pub mod peer;
pub mod raft;
pub mod reset;
pub mod snapshot;
pub mod types;
pub mod wal;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use self::command::{Command, CommandResult};
pub use self::error::{Error, Result};
use self::mvcc::Mvcc;
use self::raft::transport::Transport;
use self::raft::{Input, NodeConfig, NodeStatus, RaftNode};

use self::types::*;
use self::watch::{WatchHub, WatchMessage, WatchSpec};

/// etcd's default `--max-request-bytes`.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

#[derive(Clone)]
pub struct StoreConfig {
    /// `<data-dir>/server/db`: holds `member.json`, `wal/` and `state/`.
    pub dir: PathBuf,
    pub name: String,
    pub peer_url: String,
    pub client_url: String,
    /// Start a new cluster when the directory is empty (otherwise wait to be joined).
    pub bootstrap: bool,
    /// Identity handed out by the leader when joining an existing cluster.
    pub join_as: Option<Identity>,
    pub cache_bytes: u64,
    pub segment_bytes: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub checkpoint_entries: u64,
    pub request_timeout: Duration,
    pub on_checkpoint: Option<raft::CheckpointHook>,
    /// Writes are refused (NoSpace) while the data directory's filesystem has less free space
    /// than this, so the log and the state database never hit a full disk half-way.
    pub min_free_bytes: u64,
}

impl StoreConfig {
    pub fn new(dir: PathBuf) -> Self {
        StoreConfig {
            dir,
            name: "default".into(),
            peer_url: "https://127.0.0.1:2380".into(),
            client_url: "https://127.0.0.1:2379".into(),
            bootstrap: true,
            join_as: None,
            cache_bytes: 32 << 20,
            segment_bytes: 64 << 20,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            checkpoint_entries: 10_000,
            request_timeout: Duration::from_secs(10),
            on_checkpoint: None,
            min_free_bytes: 128 << 20,
        }
    }
}

/// Who this member is, kept in `member.json` beside the data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
    pub name: String,
}

/// Forwards what only the leader can do, when this member is not the leader.
pub trait Forwarder: Send + Sync {
    fn propose(
        &self,
        leader: u64,
        command: Command,
    ) -> futures::future::BoxFuture<'static, Result<CommandResult>>;
    fn keep_alive(&self, leader: u64, id: i64) -> futures::future::BoxFuture<'static, Result<i64>>;
    fn remove_member(
        &self,
        leader: u64,
        id: u64,
    ) -> futures::future::BoxFuture<'static, Result<Vec<Member>>>;
}

struct Inner {
    mvcc: Arc<Mvcc>,
    tx: mpsc::Sender<Input>,
    hub: WatchHub,
    status: Arc<NodeStatus>,
    identity: Identity,
    stop: Arc<AtomicBool>,
    crash: Arc<AtomicBool>,
    request_timeout: Duration,
    dir: PathBuf,
    min_free_bytes: u64,
    forwarder: std::sync::RwLock<Option<Arc<dyn Forwarder>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<Result<()>>>>,
}

/// The async handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn read_identity(path: &Path) -> Result<Option<Identity>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io(format!("{}: {e}", path.display()))),
    }
}

fn write_identity(path: &Path, id: &Identity) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(id).map_err(|e| Error::Io(e.to_string()))?;
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A random non-zero id (etcd ids are never 0).
pub fn random_id() -> u64 {
    rand::thread_rng().gen_range(1..u64::MAX)
}

impl Store {
    /// Opens the store in `cfg.dir`, replaying its log, and starts the Raft thread.
    pub fn open(cfg: StoreConfig, transport: Arc<dyn Transport>) -> Result<Store> {
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| Error::Io(format!("{}: {e}", cfg.dir.display())))?;
        let id_path = cfg.dir.join("member.json");
        let state_dir = cfg.dir.join("state");
        let wal_dir = cfg.dir.join("wal");
        let existing = read_identity(&id_path)?;
        let has_data = wal_dir.exists() || state_dir.exists();
        let (identity, bootstrap) = match (existing, &cfg.join_as) {
            (Some(id), _) => (id, false),
            (None, _) if has_data => {
                return Err(Error::Corrupt(format!(
                    "{} is missing but {} holds data; refusing to start a new member over it",
                    id_path.display(),
                    cfg.dir.display()
                )))
            }
            (None, Some(join)) => (join.clone(), false),
            (None, None) if cfg.bootstrap => (
                Identity {
                    member_id: random_id(),
                    cluster_id: random_id(),
                    name: cfg.name.clone(),
                },
                true,
            ),
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "no store here and no cluster to join".into(),
                ))
            }
        };
        if !bootstrap && cfg.join_as.is_none() {
            // An existing member: both halves of its data must be there. A missing log would
            // silently drop everything since the last checkpoint; a missing state database
            // would start empty.
            for (what, dir) in [
                ("write-ahead log", &wal_dir),
                ("state database", &state_dir),
            ] {
                if !dir.is_dir() {
                    return Err(Error::Corrupt(format!(
                        "{}: the {what} of member {:x} is missing; refusing to start \
                         (restore it, or use --cluster-reset-restore-path with a snapshot)",
                        dir.display(),
                        identity.member_id
                    )));
                }
            }
        }
        let mvcc =
            Arc::new(Mvcc::open(&state_dir, cfg.cache_bytes).map_err(|e| annotate(e, &state_dir))?);
        let (wal, replay) =
            wal::Wal::open(&wal_dir, cfg.segment_bytes).map_err(|e| annotate(e, &wal_dir))?;
        let me = Member {
            id: identity.member_id,
            name: identity.name.clone(),
            peer_urls: vec![cfg.peer_url.clone()],
            client_urls: vec![cfg.client_url.clone()],
        };
        let hub = WatchHub::new();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let crash = Arc::new(AtomicBool::new(false));
        let node_cfg = NodeConfig {
            id: identity.member_id,
            tick: cfg.tick,
            election_ticks: cfg.election_ticks,
            state_dir: state_dir.clone(),
            checkpoint_entries: cfg.checkpoint_entries,
            keep_entries: 1_000,
            bootstrap: bootstrap.then_some(me),
            on_checkpoint: cfg.on_checkpoint.clone(),
        };
        let (node, status) = RaftNode::open(
            node_cfg,
            (wal, replay),
            mvcc.clone(),
            raft::Wiring {
                hub: hub.clone(),
                transport,
                inputs: rx,
                stop: stop.clone(),
                crash: crash.clone(),
            },
        )?;
        // The identity is written once the node could start on this directory, so a failed
        // first start leaves nothing that claims to be a member.
        write_identity(&id_path, &identity)?;
        let log_end = node.last_index();
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || node.run())
            .map_err(|e| Error::Io(format!("spawning the raft thread: {e}")))?;
        // Replay the log's tail into the state machine before anyone reads from it, so a
        // restarted store never answers from an older state than it acknowledged. A member
        // of a cluster may hold uncommitted entries that never apply: bound the wait.
        let deadline = std::time::Instant::now() + cfg.tick * (cfg.election_ticks as u32) * 3;
        while status.applied.load(Ordering::Relaxed) < log_end
            && std::time::Instant::now() < deadline
            && !status.stopped.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Store {
            inner: Arc::new(Inner {
                mvcc,
                tx,
                hub,
                status,
                identity,
                stop,
                crash,
                request_timeout: cfg.request_timeout,
                dir: cfg.dir.clone(),
                min_free_bytes: cfg.min_free_bytes,
                forwarder: Default::default(),
                thread: std::sync::Mutex::new(Some(thread)),
            }),
        })
    }

    pub fn set_forwarder(&self, f: Arc<dyn Forwarder>) {
        if let Ok(mut slot) = self.inner.forwarder.write() {
            *slot = Some(f);
        }
    }

    fn forwarder(&self) -> Option<Arc<dyn Forwarder>> {
        self.inner.forwarder.read().ok().and_then(|f| f.clone())
    }

    /// Stops the Raft thread and waits for it; the state is left checkpointed.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.stop.store(true, Ordering::SeqCst);
        let handle = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            return tokio::task::spawn_blocking(move || h.join())
                .await
                .map_err(|e| Error::Io(e.to_string()))?
                .map_err(|_| Error::Io("the raft thread panicked".into()))?;
        }
        Ok(())
    }

    /// Stops the Raft thread as a crash would (no final checkpoint), for fault tests.
    #[doc(hidden)]
    pub async fn simulate_crash(&self) {
        self.inner.crash.store(true, Ordering::SeqCst);
        let handle = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    /// Resolves when the Raft thread has stopped (shutdown, fatal error, or removal).
    pub async fn stopped(&self) {
        while !self.inner.status.stopped.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    pub fn sender(&self) -> mpsc::Sender<Input> {
        self.inner.tx.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.inner.status.is_leader.load(Ordering::Relaxed)
    }

    pub fn leader(&self) -> u64 {
        self.inner.status.leader.load(Ordering::Relaxed)
    }

    pub fn header(&self) -> Header {
        Header {
            cluster_id: self.inner.identity.cluster_id,
            member_id: self.inner.identity.member_id,
            revision: self.inner.mvcc.current_revision(),
            raft_term: self.inner.status.term.load(Ordering::Relaxed),
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(raft::Reply<T>) -> Input) -> Result<T> {
        if self.inner.status.stopped.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(make(reply))
            .map_err(|_| Error::Stopped)?;
        match tokio::time::timeout(self.inner.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Proposes a command through Raft and waits until it is committed, durable and applied;
    /// forwards it to the leader when this member is not the leader.
    /// During an election (no leader yet) it waits, up to the request timeout, as etcd does:
    /// nothing was proposed, so retrying cannot apply a command twice.
    pub async fn propose(&self, command: Command) -> Result<CommandResult> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        loop {
            match self.propose_local(command.clone()).await {
                Err(Error::NotLeader { leader }) => {
                    return match self.forwarder() {
                        Some(f) => f.propose(leader, command).await,
                        None => Err(Error::NotLeader { leader }),
                    }
                }
                Err(Error::NoLeader) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Proposes on this member only: fails with `NotLeader` on a follower.
    pub async fn propose_local(&self, command: Command) -> Result<CommandResult> {
        // Compaction and revocation free space; everything else needs some.
        if matches!(command, Command::Txn(_) | Command::LeaseGrant { .. }) {
            let free = free_bytes(&self.inner.dir);
            if free < self.inner.min_free_bytes {
                return Err(Error::NoSpace(format!(
                    "{} has {free} bytes free, below the {} bytes the store keeps in reserve",
                    self.inner.dir.display(),
                    self.inner.min_free_bytes
                )));
            }
        }
        let size = command::encode(&command).len();
        if size > MAX_REQUEST_BYTES {
            return Err(Error::RequestTooLarge {
                size,
                limit: MAX_REQUEST_BYTES,
            });
        }
        self.ask(|reply| Input::Propose { command, reply }).await
    }

    /// Waits until this member has applied everything committed when the call began.
    pub async fn read_barrier(&self) -> Result<()> {
        self.ask(|reply| Input::ReadIndex { reply })
            .await
            .map(|_| ())
    }

    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        if !req.serializable {
            self.read_barrier().await?;
        }
        let mvcc = self.inner.mvcc.clone();
        tokio::task::spawn_blocking(move || mvcc.range(&req))
            .await
            .map_err(|e| Error::Io(e.to_string()))?
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        validate_txn(&req)?;
        match self.propose(Command::Txn(req)).await? {
            CommandResult::Txn(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let r = self.txn(TxnRequest::single(TxnOp::Put(req))).await?;
        match r.responses.into_iter().next() {
            Some(TxnOpResponse::Put(p)) => Ok(p),
            _ => Err(Error::Io("put produced no response".into())),
        }
    }

    pub async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        let r = self.txn(TxnRequest::single(TxnOp::Delete(req))).await?;
        match r.responses.into_iter().next() {
            Some(TxnOpResponse::Delete(d)) => Ok(d),
            _ => Err(Error::Io("delete produced no response".into())),
        }
    }

    pub async fn compact(&self, revision: Revision) -> Result<Revision> {
        match self.propose(Command::Compact { revision }).await? {
            CommandResult::Compacted { revision } => Ok(revision),
            other => Err(unexpected(other)),
        }
    }

    /// Grants a lease; `id` 0 lets the store choose one. Returns (id, ttl).
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64)> {
        if ttl > raft::MAX_TTL {
            return Err(Error::InvalidArgument("too large lease TTL".into()));
        }
        let ttl = ttl.max(raft::MIN_TTL);
        let id = if id == 0 {
            rand::thread_rng().gen_range(1..i64::MAX)
        } else {
            id
        };
        match self.propose(Command::LeaseGrant { id, ttl }).await? {
            CommandResult::LeaseGranted { id, ttl, .. } => Ok((id, ttl)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<Revision> {
        match self.propose(Command::LeaseRevoke { id }).await? {
            CommandResult::LeaseRevoked { revision } => Ok(revision),
            other => Err(unexpected(other)),
        }
    }

    /// Refreshes a lease's deadline (on the leader); returns its TTL.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        match self.lease_keep_alive_local(id).await {
            Err(Error::NotLeader { leader }) => match self.forwarder() {
                Some(f) => f.keep_alive(leader, id).await,
                None => Err(Error::NotLeader { leader }),
            },
            other => other,
        }
    }

    /// Refreshes a lease on this member only (the leader keeps deadlines).
    pub async fn lease_keep_alive_local(&self, id: i64) -> Result<i64> {
        self.ask(|reply| Input::LeaseKeepAlive { id, reply }).await
    }

    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseInfo> {
        let Some((granted_ttl, attached)) = self.inner.mvcc.lease(id) else {
            return Ok(LeaseInfo {
                id,
                ttl: -1,
                ..Default::default()
            });
        };
        let ttl = match self.ask(|reply| Input::LeaseRemaining { id, reply }).await {
            Ok(t) => t,
            // A follower does not track deadlines; the granted TTL bounds what is left.
            Err(Error::NotLeader { .. }) => granted_ttl,
            Err(e) => return Err(e),
        };
        Ok(LeaseInfo {
            id,
            ttl,
            granted_ttl,
            keys: if keys { attached } else { Vec::new() },
        })
    }

    pub fn leases(&self) -> Vec<i64> {
        self.inner
            .mvcc
            .leases()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    pub fn members(&self) -> Vec<Member> {
        self.inner.mvcc.membership().members
    }

    pub async fn add_member(&self, member: Member) -> Result<Vec<Member>> {
        self.ask(|reply| Input::AddMember { member, reply }).await
    }

    /// Removes a member (forwarded to the leader when needed).
    pub async fn remove_member(&self, id: u64) -> Result<Vec<Member>> {
        match self.remove_member_local(id).await {
            Err(Error::NotLeader { leader }) => match self.forwarder() {
                Some(f) => f.remove_member(leader, id).await,
                None => Err(Error::NotLeader { leader }),
            },
            other => other,
        }
    }

    pub async fn remove_member_local(&self, id: u64) -> Result<Vec<Member>> {
        self.ask(|reply| Input::RemoveMember { id, reply }).await
    }

    pub fn status(&self) -> StoreStatus {
        let s = &self.inner.status;
        StoreStatus {
            member_id: self.inner.identity.member_id,
            leader: s.leader.load(Ordering::Relaxed),
            raft_index: s.commit.load(Ordering::Relaxed),
            raft_term: s.term.load(Ordering::Relaxed),
            raft_applied_index: s.applied.load(Ordering::Relaxed),
            revision: self.inner.mvcc.current_revision(),
            compact_revision: self.inner.mvcc.compact_revision(),
            db_size: self.inner.mvcc.db_size(),
        }
    }

    pub fn current_revision(&self) -> Revision {
        self.inner.mvcc.current_revision()
    }

    /// Starts a watcher; events arrive on the returned channel until `cancel` fires or the
    /// receiver is dropped.
    pub fn watch(
        &self,
        spec: WatchSpec,
        cancel: CancellationToken,
    ) -> tokio::sync::mpsc::Receiver<WatchMessage> {
        let (tx, rx) = tokio::sync::mpsc::channel(128);
        let hub = self.inner.hub.clone();
        let mvcc = self.inner.mvcc.clone();
        tokio::spawn(watch::run_watcher(hub, mvcc, spec, tx, cancel));
        rx
    }

    /// Writes a consistent snapshot of the whole store (see `snapshot`).
    pub fn write_snapshot<W: std::io::Write>(&self, out: &mut W) -> Result<u64> {
        self.inner.mvcc.write_consistent_snapshot(out)
    }
}

/// Free bytes for unprivileged writers on the filesystem holding `dir` (u64::MAX if unknown).
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return u64::MAX;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter of the right type.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return u64::MAX;
    }
    (st.f_bavail as u64).saturating_mul(st.f_frsize as u64)
}

fn unexpected(r: CommandResult) -> Error {
    Error::Io(format!("unexpected result from the state machine: {r:?}"))
}

fn annotate(e: Error, path: &Path) -> Error {
    match e {
        Error::Corrupt(m) if !m.contains(&path.display().to_string()) => {
            Error::Corrupt(format!("{}: {m}", path.display()))
        }
        Error::Io(m) => Error::Io(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// etcd's request checks: op count, and no key written twice in one branch.
fn validate_txn(req: &TxnRequest) -> Result<()> {
    fn count(ops: &[TxnOp]) -> usize {
        ops.iter()
            .map(|op| match op {
                TxnOp::Txn(t) => 1 + count(&t.success).max(count(&t.failure)),
                _ => 1,
            })
            .sum()
    }
    if req.compare.len() > MAX_TXN_OPS
        || count(&req.success) > MAX_TXN_OPS
        || count(&req.failure) > MAX_TXN_OPS
    {
        return Err(Error::TooManyOps);
    }
    for branch in [&req.success, &req.failure] {
        let mut puts = std::collections::HashSet::new();
        for op in branch.iter() {
            match op {
                TxnOp::Put(p) => {
                    if p.key.is_empty() {
                        return Err(Error::EmptyKey);
                    }
                    if !puts.insert(p.key.clone()) {
                        return Err(Error::DuplicateKey);
                    }
                }
                TxnOp::Delete(d) if d.key.is_empty() => return Err(Error::EmptyKey),
                TxnOp::Range(r) if r.key.is_empty() => return Err(Error::EmptyKey),
                TxnOp::Txn(t) => validate_txn(t)?,
                _ => {}
            }
        }
        for op in branch.iter() {
            if let TxnOp::Delete(d) = op {
                let range = mvcc::index::KeyRange::new(&d.key, &d.range_end);
                if puts.iter().any(|k| range.contains(k)) {
                    return Err(Error::DuplicateKey);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
