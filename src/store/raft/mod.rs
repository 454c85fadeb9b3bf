//! The Raft driver: the one thread that owns the raft-rs node. It batches proposals, makes
//! the log durable before anything is acknowledged, sends messages, applies committed
//! entries to the state machine in log order, answers ReadIndex requests and keeps lease
//! deadlines. Everything else talks to it through `Input` messages (etcd's raft loop order:
//! tick, step, Ready → persist → send → apply → advance).
mod apply;
mod lessor;
mod storage;
pub mod transport;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::*;
use raft::StateRole;
use tokio::sync::oneshot;

use self::lessor::Lessor;
pub use self::lessor::{MAX_TTL, MIN_TTL};
use self::storage::LogStorage;
use self::transport::Transport;
use super::command::{self, Command, CommandResult, MemberChange, Proposal};
use super::error::{Error, Result};
use super::mvcc::{Applied, Membership, Mvcc};
use super::types::Member;
use super::wal::Wal;
use super::watch::WatchHub;

pub type Reply<T> = oneshot::Sender<Result<T>>;

/// Requests to the Raft thread.
pub enum Input {
    Propose {
        command: Command,
        reply: Reply<CommandResult>,
    },
    ReadIndex {
        reply: Reply<u64>,
    },
    Step(Box<Message>),
    AddMember {
        member: Member,
        reply: Reply<Vec<Member>>,
    },
    RemoveMember {
        id: u64,
        reply: Reply<Vec<Member>>,
    },
    LeaseKeepAlive {
        id: i64,
        reply: Reply<i64>,
    },
    LeaseRemaining {
        id: i64,
        reply: Reply<i64>,
    },
    Unreachable(u64),
    SnapshotSent {
        to: u64,
        ok: bool,
    },
}

/// What other threads may read about the node without asking it.
#[derive(Default, Debug)]
pub struct NodeStatus {
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    pub is_leader: AtomicBool,
    /// Set when the Raft thread has stopped (fatal error or shutdown).
    pub stopped: AtomicBool,
}

pub struct NodeConfig {
    pub id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub state_dir: PathBuf,
    /// Checkpoint (fsync the state machine, release old log segments) after this many
    /// applied entries.
    pub checkpoint_entries: u64,
    /// Entries kept in memory behind the applied index for followers that lag a little.
    pub keep_entries: u64,
    /// A fresh store starts a new one-member cluster (otherwise it waits to be sent a
    /// snapshot by the leader of the cluster it joined).
    pub bootstrap: Option<Member>,
    /// Called on the Raft thread after every durable checkpoint with the state directory
    /// (tests use it to keep what a power cut would leave behind).
    pub on_checkpoint: Option<CheckpointHook>,
}

pub type CheckpointHook = Arc<dyn Fn(&std::path::Path) + Send + Sync>;

/// How the node is connected to the rest of the process.
pub struct Wiring {
    pub hub: WatchHub,
    pub transport: Arc<dyn Transport>,
    pub inputs: Receiver<Input>,
    pub stop: Arc<AtomicBool>,
    pub crash: Arc<AtomicBool>,
}

/// How long a ReadIndex request may go unanswered before it is asked again.
const READ_RETRY: Duration = Duration::from_millis(300);

/// The most commands one log entry carries, and the most bytes.
const MAX_BATCH: usize = 1024;
const MAX_BATCH_BYTES: usize = 8 << 20;

pub struct RaftNode {
    cfg: NodeConfig,
    node: RawNode<LogStorage>,
    wal: Wal,
    mvcc: Arc<Mvcc>,
    hub: WatchHub,
    transport: Arc<dyn Transport>,
    inputs: Receiver<Input>,
    status: Arc<NodeStatus>,
    stop: Arc<AtomicBool>,
    /// Set to end the loop as a crash would: no final checkpoint.
    crash: Arc<AtomicBool>,
    /// This member was removed from the cluster: the loop ends.
    removed: bool,
    seq: u64,
    pending: HashMap<u64, Reply<CommandResult>>,
    /// ReadIndex requests in flight: context → (when last asked, waiters).
    reads: HashMap<Vec<u8>, (Instant, Vec<Reply<u64>>)>,
    reads_waiting_apply: Vec<(u64, Reply<u64>)>,
    conf_waiters: HashMap<u64, Reply<Vec<Member>>>,
    lessor: Lessor,
    persisted_hs: HardState,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    role: StateRole,
}

fn slog_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

/// Sends raft-rs's slog records to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

fn conf_state_of(m: &Membership) -> Result<ConfState> {
    let mut cs = ConfState::default();
    cs.merge_from_bytes(&m.conf_state)
        .map_err(|e| Error::Corrupt(format!("stored Raft configuration: {e}")))?;
    Ok(cs)
}

fn encode_pb(m: &impl protobuf::Message) -> Vec<u8> {
    m.write_to_bytes().unwrap_or_default()
}

impl RaftNode {
    /// Restores the node from the log and state machine (or bootstraps a fresh one).
    pub fn open(
        cfg: NodeConfig,
        log: (Wal, super::wal::Replay),
        mvcc: Arc<Mvcc>,
        wiring: Wiring,
    ) -> Result<(RaftNode, Arc<NodeStatus>)> {
        let (mut wal, replay) = log;
        let Wiring {
            hub,
            transport,
            inputs,
            stop,
            crash,
        } = wiring;
        let storage = LogStorage::new(mvcc.clone());
        let mut applied = mvcc.applied();
        let fresh = applied.index == 0 && replay.entries.is_empty() && replay.start.0 == 0;
        if fresh {
            if let Some(me) = &cfg.bootstrap {
                // A virtual snapshot at index 1 holding the first membership: members that join
                // later have no log and are sent a snapshot, as in TiKV.
                let cs = ConfState {
                    voters: vec![me.id],
                    ..Default::default()
                };
                let membership = Membership {
                    members: vec![me.clone()],
                    conf_state: encode_pb(&cs),
                };
                applied = Applied { index: 1, term: 1 };
                mvcc.apply_membership(applied, Some(membership))?;
                mvcc.checkpoint(&cfg.state_dir)?;
                let hs = HardState {
                    term: 1,
                    commit: 1,
                    ..Default::default()
                };
                wal.restart_at(1, 1, &hs)?;
                install_start(&storage, 1, 1, cs, hs);
            }
        } else {
            let (start_index, start_term) = replay.start;
            let last = replay
                .entries
                .last()
                .map(|e| e.index)
                .unwrap_or(start_index);
            if applied.index < start_index {
                return Err(Error::Corrupt(format!(
                    "{}: the state database is at log index {} but the log starts after {}: \
                     entries in between are missing (damaged or replaced state database?)",
                    cfg.state_dir.display(),
                    applied.index,
                    start_index
                )));
            }
            let cs = conf_state_of(&mvcc.membership())?;
            let mut hs = replay.hard_state.clone().unwrap_or_default();
            if applied.index > last {
                // The state machine holds a snapshot newer than the log (its install finished
                // but the log restart did not): the log starts there.
                hs.commit = hs.commit.max(applied.index);
                hs.term = hs.term.max(applied.term);
                wal.restart_at(applied.index, applied.term, &hs)?;
                install_start(&storage, applied.index, applied.term, cs, hs);
            } else {
                // Entries up to `applied` were committed, whatever the stored commit says.
                hs.commit = hs.commit.max(applied.index).min(last);
                install_start(&storage, start_index, start_term, cs, hs);
                let first_entry = start_index + 1;
                let entries: Vec<Entry> = replay.entries;
                if !entries.is_empty() {
                    debug_assert_eq!(entries[0].index, first_entry);
                    storage
                        .mem
                        .wl()
                        .append(&entries)
                        .map_err(|e| Error::Corrupt(format!("replaying the log: {e}")))?;
                }
            }
        }
        let persisted_hs = storage.mem.rl().hard_state().clone();
        let config = Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: 1,
            applied: applied.index,
            max_size_per_msg: 4 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| Error::InvalidArgument(format!("raft configuration: {e}")))?;
        let mut node = RawNode::new(&config, storage, &slog_logger())
            .map_err(|e| Error::Corrupt(format!("starting raft: {e}")))?;
        let single_voter = node.raft.prs().conf().voters().ids().len() == 1
            && node.raft.prs().conf().voters().contains(cfg.id);
        if single_voter {
            // Nobody to wait for: elect ourselves now rather than after a timeout.
            let _ = node.campaign();
        }
        let status = Arc::new(NodeStatus::default());
        status.applied.store(applied.index, Ordering::Relaxed);
        let mut lessor = Lessor::default();
        lessor.promote(mvcc.leases().into_iter());
        transport.set_members(&mvcc.membership().members);
        let node = RaftNode {
            cfg,
            node,
            wal,
            mvcc,
            hub,
            transport,
            inputs,
            status: status.clone(),
            stop,
            crash,
            removed: false,
            seq: 0,
            pending: HashMap::new(),
            reads: HashMap::new(),
            reads_waiting_apply: Vec::new(),
            conf_waiters: HashMap::new(),
            lessor,
            persisted_hs,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            role: StateRole::Follower,
        };
        Ok((node, status))
    }

    /// The index of the last entry in the log.
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// Runs until stopped. A failure to persist is fatal (etcd's rule): returning the error
    /// makes the store refuse further requests instead of acknowledging what is not durable.
    pub fn run(mut self) -> Result<()> {
        let result = self.run_loop();
        self.status.stopped.store(true, Ordering::SeqCst);
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(Error::Stopped));
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "raft loop stopped");
        }
        tracing::info!(
            log_bytes = self.wal.bytes_written(),
            log_syncs = self.wal.frames_written(),
            applied = self.mvcc.applied().index,
            "raft loop stopped"
        );
        // Leave the state machine durable so the next start replays little.
        if !self.crash.load(Ordering::SeqCst) {
            if let Ok(a) = self.checkpoint() {
                let _ = self.wal.release_to(a.index);
            }
        }
        result
    }

    fn run_loop(&mut self) -> Result<()> {
        let mut next_tick = Instant::now() + self.cfg.tick;
        let mut proposals: Vec<(Command, Reply<CommandResult>)> = Vec::new();
        let mut read_waiters: Vec<Reply<u64>> = Vec::new();
        self.on_ready()?;
        while !self.stop.load(Ordering::Relaxed)
            && !self.crash.load(Ordering::Relaxed)
            && !self.removed
        {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            match self.inputs.recv_timeout(timeout) {
                Ok(first) => {
                    self.take_input(first, &mut proposals, &mut read_waiters)?;
                    // Group commit: take everything already queued into this round.
                    while proposals.len() < MAX_BATCH {
                        match self.inputs.try_recv() {
                            Ok(i) => self.take_input(i, &mut proposals, &mut read_waiters)?,
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick = Instant::now() + self.cfg.tick;
                self.expire_leases();
                self.retry_reads();
            }
            if !proposals.is_empty() {
                self.propose(std::mem::take(&mut proposals));
            }
            if !read_waiters.is_empty() {
                self.seq += 1;
                let ctx = self.seq.to_be_bytes().to_vec();
                self.node.read_index(ctx.clone());
                self.reads
                    .insert(ctx, (Instant::now(), std::mem::take(&mut read_waiters)));
            }
            self.on_ready()?;
            self.maybe_checkpoint()?;
        }
        Ok(())
    }

    fn take_input(
        &mut self,
        input: Input,
        proposals: &mut Vec<(Command, Reply<CommandResult>)>,
        reads: &mut Vec<Reply<u64>>,
    ) -> Result<()> {
        match input {
            Input::Propose { command, reply } => proposals.push((command, reply)),
            Input::ReadIndex { reply } => reads.push(reply),
            Input::Step(m) => {
                if let Err(e) = self.node.step(*m) {
                    tracing::debug!(error = %e, "dropped a raft message");
                }
            }
            Input::AddMember { member, reply } => self.change_member(
                ConfChangeType::AddNode,
                member.id,
                MemberChange { member },
                reply,
            ),
            Input::RemoveMember { id, reply } => {
                let member = self
                    .mvcc
                    .membership()
                    .members
                    .into_iter()
                    .find(|m| m.id == id);
                match member {
                    Some(member) => self.change_member(
                        ConfChangeType::RemoveNode,
                        id,
                        MemberChange { member },
                        reply,
                    ),
                    None => {
                        let _ = reply.send(Err(Error::MemberNotFound));
                    }
                }
            }
            Input::LeaseKeepAlive { id, reply } => {
                let r = if !self.is_leader() {
                    Err(self.not_leader())
                } else {
                    self.lessor.keep_alive(id).ok_or(Error::LeaseNotFound)
                };
                let _ = reply.send(r);
            }
            Input::LeaseRemaining { id, reply } => {
                let r = if !self.is_leader() {
                    Err(self.not_leader())
                } else {
                    self.lessor.remaining(id).ok_or(Error::LeaseNotFound)
                };
                let _ = reply.send(r);
            }
            Input::Unreachable(id) => self.node.report_unreachable(id),
            Input::SnapshotSent { to, ok } => {
                let status = if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.node.report_snapshot(to, status);
            }
        }
        Ok(())
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    fn not_leader(&self) -> Error {
        match self.node.raft.leader_id {
            0 => Error::NoLeader,
            leader => Error::NotLeader { leader },
        }
    }

    fn change_member(
        &mut self,
        kind: ConfChangeType,
        id: u64,
        change: MemberChange,
        reply: Reply<Vec<Member>>,
    ) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        // The member's details travel inside the change itself, so applying needs nothing else.
        cc.context = command::encode(&change).into();
        match self.node.propose_conf_change(Vec::new(), cc) {
            Ok(()) => {
                self.conf_waiters.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(Error::InvalidArgument(format!(
                    "membership change refused: {e}"
                ))));
            }
        }
    }

    fn propose(&mut self, proposals: Vec<(Command, Reply<CommandResult>)>) {
        if !self.is_leader() {
            let err = self.not_leader();
            for (_, reply) in proposals {
                let _ = reply.send(Err(clone_err(&err)));
            }
            return;
        }
        let mut batch: Vec<Proposal> = Vec::new();
        let mut replies: Vec<(u64, Reply<CommandResult>)> = Vec::new();
        let mut bytes = 0usize;
        for (command, reply) in proposals {
            self.seq += 1;
            let id = self.seq;
            bytes += approx_size(&command);
            batch.push(Proposal { id, command });
            replies.push((id, reply));
            if bytes >= MAX_BATCH_BYTES {
                self.propose_batch(std::mem::take(&mut batch), std::mem::take(&mut replies));
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.propose_batch(batch, replies);
        }
    }

    fn propose_batch(&mut self, batch: Vec<Proposal>, replies: Vec<(u64, Reply<CommandResult>)>) {
        let data = command::encode(&(self.cfg.id, batch));
        if let Err(e) = self.wal.ensure_room(data.len() + 256) {
            tracing::warn!(error = %e, "no room in the log for new writes");
            for (_, reply) in replies {
                let _ = reply.send(Err(clone_err(&e)));
            }
            return;
        }
        match self.node.propose(Vec::new(), data) {
            Ok(()) => self.pending.extend(replies),
            Err(e) => {
                for (_, reply) in replies {
                    let _ = reply.send(Err(Error::InvalidArgument(format!(
                        "proposal dropped: {e}"
                    ))));
                }
            }
        }
    }

    fn expire_leases(&mut self) {
        if !self.is_leader() {
            return;
        }
        for id in self.lessor.take_expired() {
            tracing::debug!(lease = id, "lease expired; revoking");
            self.seq += 1;
            let data = command::encode(&(
                self.cfg.id,
                vec![Proposal {
                    id: 0,
                    command: Command::LeaseRevoke { id },
                }],
            ));
            let _ = self.node.propose(Vec::new(), data);
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            self.on_role(ss.raft_state, ss.leader_id);
        }
        if let Some(hs) = rd.hs() {
            self.status.commit.store(hs.commit, Ordering::Relaxed);
            self.status.term.store(hs.term, Ordering::Relaxed);
        }
        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.install_snapshot(snap)?;
        }
        for rs in rd.take_read_states() {
            self.on_read_state(rs.index, rs.request_ctx);
        }
        let committed = rd.take_committed_entries();
        self.apply(committed)?;
        self.persist(rd.entries(), rd.hs())?;
        if !rd.persisted_messages().is_empty() {
            self.transport.send(rd.take_persisted_messages());
        }
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.node
                .mut_store()
                .mem
                .wl()
                .mut_hard_state()
                .set_commit(commit);
            self.status.commit.store(commit, Ordering::Relaxed);
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        Ok(())
    }

    fn on_role(&mut self, role: StateRole, leader: u64) {
        self.status.leader.store(leader, Ordering::Relaxed);
        self.status
            .term
            .store(self.node.raft.term, Ordering::Relaxed);
        let was_leader = self.role == StateRole::Leader;
        self.role = role;
        let is_leader = role == StateRole::Leader;
        self.status.is_leader.store(is_leader, Ordering::Relaxed);
        if is_leader && !was_leader {
            tracing::info!(term = self.node.raft.term, "became the store's Raft leader");
            self.lessor.promote(self.mvcc.leases().into_iter());
        } else if was_leader && !is_leader {
            tracing::info!(term = self.node.raft.term, leader, "lost Raft leadership");
            self.lessor.demote();
            let err = self.not_leader();
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(clone_err(&err)));
            }
        }
    }

    /// Persists new entries and hard state with one fdatasync. A hard state that differs only
    /// in its commit index is not worth a sync of its own: it rides with the next entries.
    fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<()> {
        let mut to_write = None;
        if let Some(hs) = hs {
            let must = hs.term != self.persisted_hs.term || hs.vote != self.persisted_hs.vote;
            if must || !entries.is_empty() {
                to_write = Some(hs.clone());
            }
            self.node.mut_store().mem.wl().set_hardstate(hs.clone());
        } else if !entries.is_empty() {
            let current = self.node.store().mem.rl().hard_state().clone();
            if current != self.persisted_hs {
                to_write = Some(current);
            }
        }
        if entries.is_empty() && to_write.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        self.wal.append(entries, to_write.as_ref())?;
        slow("persisting to the log", started, entries.len());
        if let Some(hs) = to_write {
            self.persisted_hs = hs;
        }
        if !entries.is_empty() {
            self.node
                .mut_store()
                .mem
                .wl()
                .append(entries)
                .map_err(|e| Error::Corrupt(format!("appending to the in-memory log: {e}")))?;
        }
        Ok(())
    }

    /// raft-rs drops a ReadIndex request it cannot serve (no leader known yet, or the leader
    /// changed); ask again for those unanswered after a while, as etcd's read loop does.
    fn retry_reads(&mut self) {
        let now = Instant::now();
        let stale: Vec<Vec<u8>> = self
            .reads
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) > READ_RETRY)
            .map(|(ctx, _)| ctx.clone())
            .collect();
        for ctx in stale {
            if let Some(entry) = self.reads.get_mut(&ctx) {
                entry.0 = now;
            }
            self.node.read_index(ctx);
        }
    }

    fn on_read_state(&mut self, index: u64, ctx: Vec<u8>) {
        let Some((_, waiters)) = self.reads.remove(&ctx) else {
            return;
        };
        let applied = self.mvcc.applied().index;
        for w in waiters {
            if applied >= index {
                let _ = w.send(Ok(index));
            } else {
                self.reads_waiting_apply.push((index, w));
            }
        }
    }

    /// Keeps only the last `keep_entries` applied entries in memory (they are in the WAL on
    /// disk; a follower further behind gets a snapshot).
    fn trim_memory_log(&mut self, applied: u64) {
        let keep = self.cfg.keep_entries;
        let first = raft::Storage::first_index(self.node.store()).unwrap_or(1);
        if applied > first + 2 * keep {
            let _ = self.node.mut_store().mem.wl().compact(applied - keep);
        }
    }

    fn checkpoint(&self) -> Result<Applied> {
        let applied = self.mvcc.checkpoint(&self.cfg.state_dir)?;
        if let Some(hook) = &self.cfg.on_checkpoint {
            hook(&self.cfg.state_dir);
        }
        Ok(applied)
    }

    fn maybe_checkpoint(&mut self) -> Result<()> {
        let due = self.since_checkpoint >= self.cfg.checkpoint_entries
            || (self.since_checkpoint > 0
                && self.last_checkpoint.elapsed() > Duration::from_secs(30));
        if !due {
            return Ok(());
        }
        let started = Instant::now();
        let applied = self.checkpoint()?;
        let released = self.wal.release_to(applied.index)?;
        tracing::debug!(
            index = applied.index,
            released,
            log_bytes = self.wal.bytes_written(),
            log_syncs = self.wal.frames_written(),
            took_ms = started.elapsed().as_millis() as u64,
            "checkpointed the state database"
        );
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

/// etcd warns when an apply or a log sync takes over 100 ms; so does krab.
fn slow(what: &str, started: Instant, items: usize) {
    let took = started.elapsed();
    if took > Duration::from_millis(100) {
        tracing::warn!(
            took_ms = took.as_millis() as u64,
            items,
            "{what} took too long"
        );
    } else if took > Duration::from_millis(10) {
        tracing::debug!(took_ms = took.as_millis() as u64, items, "{what} was slow");
    }
}

fn install_start(storage: &LogStorage, index: u64, term: u64, cs: ConfState, hs: HardState) {
    let mut snap = Snapshot::default();
    let meta = snap.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(cs);
    let mut core = storage.mem.wl();
    // Only fails for a snapshot older than the storage's first index, which is 1 here.
    let _ = core.apply_snapshot(snap);
    core.set_hardstate(hs);
}

fn approx_size(c: &Command) -> usize {
    match c {
        Command::Txn(t) => t
            .success
            .iter()
            .chain(t.failure.iter())
            .map(|op| match op {
                super::types::TxnOp::Put(p) => p.key.len() + p.value.len() + 16,
                _ => 64,
            })
            .sum(),
        _ => 32,
    }
}

fn clone_err(e: &Error) -> Error {
    match e {
        Error::NotLeader { leader } => Error::NotLeader { leader: *leader },
        Error::NoLeader => Error::NoLeader,
        Error::NoSpace(m) => Error::NoSpace(m.clone()),
        other => Error::Io(other.to_string()),
    }
}
