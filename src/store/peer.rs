//! Raft between servers over gRPC with mutual TLS: the transport the Raft thread sends
//! through, the service that receives, forwarding of writes and keep-alives to the leader,
//! and the join handshake. Peer certificates come from the peer CA in
//! `<data-dir>/server/tls/etcd` (see ARCHITECTURE.md for how joiners get it today).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status};

use super::command::{self, Command, CommandResult};
use super::raft::transport::Transport;
use super::raft::Input;
use super::types::Member;
use super::{Error, Result, Store};

pub mod pb {
    tonic::include_proto!("krab.peer.v1");
}

use pb::peer_client::PeerClient;
use pb::peer_server::{Peer, PeerServer};

/// Certificates for peer traffic (both directions).
#[derive(Clone)]
pub struct PeerTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl PeerTls {
    fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            // Peer certificates name the host they serve on, not the URL each peer is
            // dialled with; "localhost" is in every peer certificate.
            .domain_name("localhost")
    }
}

/// Snapshots can be large; everything else is far below this.
const MAX_PEER_MESSAGE: usize = 1 << 30;
const QUEUE: usize = 4096;

struct Link {
    url: String,
    tx: mpsc::Sender<Message>,
    cancel: CancellationToken,
}

/// Sends Raft messages to peers (one ordered queue and task per peer) and forwards requests
/// to the leader.
pub struct GrpcTransport {
    /// This member's id; set once the store knows it (a new member learns it at open).
    me: std::sync::atomic::AtomicU64,
    tls: PeerTls,
    links: Mutex<HashMap<u64, Link>>,
    urls: Mutex<HashMap<u64, String>>,
    inputs: Mutex<Option<std::sync::mpsc::Sender<Input>>>,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
}

impl GrpcTransport {
    pub fn new(me: u64, tls: PeerTls, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(GrpcTransport {
            me: std::sync::atomic::AtomicU64::new(me),
            tls,
            links: Mutex::new(HashMap::new()),
            urls: Mutex::new(HashMap::new()),
            inputs: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            shutdown,
        })
    }

    pub fn set_me(&self, id: u64) {
        self.me.store(id, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where failures to reach a peer are reported (the Raft thread's input).
    pub fn report_to(&self, inputs: std::sync::mpsc::Sender<Input>) {
        if let Ok(mut slot) = self.inputs.lock() {
            *slot = Some(inputs);
        }
    }

    fn report(&self, input: Input) {
        if let Ok(slot) = self.inputs.lock() {
            if let Some(tx) = slot.as_ref() {
                let _ = tx.send(input);
            }
        }
    }

    fn channel(&self, url: &str) -> Result<Channel> {
        let ep = Endpoint::from_shared(url.to_string())
            .map_err(|e| Error::InvalidArgument(format!("peer URL {url}: {e}")))?
            .tls_config(self.tls.client())
            .map_err(|e| Error::InvalidArgument(format!("peer TLS: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        Ok(ep.connect_lazy())
    }

    fn client_for(&self, id: u64) -> Result<PeerClient<Channel>> {
        let url = self
            .urls
            .lock()
            .ok()
            .and_then(|u| u.get(&id).cloned())
            .ok_or(Error::NoLeader)?;
        Ok(PeerClient::new(self.channel(&url)?).max_decoding_message_size(MAX_PEER_MESSAGE))
    }

    fn start_link(self: &Arc<Self>, id: u64, url: String) -> Link {
        let (tx, rx) = mpsc::channel(QUEUE);
        let cancel = self.shutdown.child_token();
        let this = self.clone();
        let c = cancel.clone();
        let u = url.clone();
        self.runtime
            .spawn(async move { this.run_link(id, u, rx, c).await });
        Link { url, tx, cancel }
    }

    async fn run_link(
        self: Arc<Self>,
        id: u64,
        url: String,
        mut rx: mpsc::Receiver<Message>,
        cancel: CancellationToken,
    ) {
        let mut client = match self.channel(&url) {
            Ok(ch) => PeerClient::new(ch).max_encoding_message_size(MAX_PEER_MESSAGE),
            Err(e) => {
                tracing::error!(peer = id, url = %url, error = %e, "cannot reach peer");
                return;
            }
        };
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            let mut batch = vec![first];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let snapshots: Vec<u64> = batch
                .iter()
                .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
                .map(|m| m.to)
                .collect();
            let messages = batch
                .iter()
                .filter_map(|m| m.write_to_bytes().ok())
                .collect();
            let sent = tokio::time::timeout(
                Duration::from_secs(if snapshots.is_empty() { 5 } else { 120 }),
                client.deliver(pb::RaftBatch { messages }),
            )
            .await;
            let ok = matches!(sent, Ok(Ok(_)));
            if !ok {
                tracing::debug!(peer = id, url = %url, "peer unreachable");
                self.report(Input::Unreachable(id));
            }
            for to in snapshots {
                self.report(Input::SnapshotSent { to, ok });
            }
            if !ok {
                // Back off a little; raft resends what matters.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

impl Transport for Arc<GrpcTransport> {
    fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let Ok(links) = self.links.lock() else { return };
        for m in msgs {
            match links.get(&m.to) {
                Some(link) => {
                    if link.tx.try_send(m).is_err() {
                        tracing::debug!("peer queue full; dropping a raft message");
                    }
                }
                None => tracing::debug!(to = m.to, "no address for raft peer"),
            }
        }
    }

    fn set_members(&self, members: &[Member]) {
        let Ok(mut links) = self.links.lock() else {
            return;
        };
        let me = self.me.load(std::sync::atomic::Ordering::Relaxed);
        let mut urls = HashMap::new();
        for m in members {
            if let Some(url) = m.peer_urls.first() {
                urls.insert(m.id, url.clone());
            }
        }
        links.retain(|id, link| {
            let keep = *id != me && urls.get(id) == Some(&link.url);
            if !keep {
                link.cancel.cancel();
            }
            keep
        });
        for (id, url) in &urls {
            if *id != me && !links.contains_key(id) {
                let link = self.start_link(*id, url.clone());
                links.insert(*id, link);
            }
        }
        if let Ok(mut u) = self.urls.lock() {
            *u = urls;
        }
    }
}

impl super::Forwarder for Arc<GrpcTransport> {
    fn propose(&self, leader: u64, command: Command) -> BoxFuture<'static, Result<CommandResult>> {
        let client = self.client_for(leader);
        Box::pin(async move {
            let mut client = client?;
            let resp = client
                .propose(pb::ProposeRequest {
                    command: command::encode(&command),
                })
                .await
                .map_err(|e| Error::Io(format!("forwarding to the leader: {}", e.message())))?;
            command::decode::<Result<CommandResult>>(&resp.into_inner().result)
                .map_err(|e| Error::Io(format!("leader's answer: {e}")))?
        })
    }

    fn remove_member(&self, leader: u64, id: u64) -> BoxFuture<'static, Result<Vec<Member>>> {
        let client = self.client_for(leader);
        Box::pin(async move {
            let mut client = client?;
            let resp = client
                .remove_member(pb::RemoveMemberRequest { member_id: id })
                .await
                .map_err(|e| Error::Io(format!("forwarding to the leader: {}", e.message())))?;
            command::decode::<Result<Vec<Member>>>(&resp.into_inner().result)
                .map_err(|e| Error::Io(format!("leader's answer: {e}")))?
        })
    }

    fn keep_alive(&self, leader: u64, id: i64) -> BoxFuture<'static, Result<i64>> {
        let client = self.client_for(leader);
        Box::pin(async move {
            let mut client = client?;
            let resp = client
                .keep_alive(pb::KeepAliveRequest { lease_id: id })
                .await
                .map_err(|e| Error::Io(format!("forwarding to the leader: {}", e.message())))?;
            command::decode::<Result<i64>>(&resp.into_inner().result)
                .map_err(|e| Error::Io(format!("leader's answer: {e}")))?
        })
    }
}

/// Receives peer traffic for one store.
pub struct PeerService {
    pub store: Store,
    pub token: String,
    pub transport: Arc<GrpcTransport>,
    /// The peer CA handed to joiners that prove they hold the token.
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    /// Where the cluster CAs live (`<data-dir>/server/tls`), handed over too so every server
    /// of the cluster serves and trusts the same certificates.
    pub cluster_tls_dir: std::path::PathBuf,
}

/// Every call but Bootstrap needs a client certificate from the peer CA (the server accepts
/// connections without one only so that Bootstrap can be reached).
fn require_peer_cert<T>(req: &Request<T>) -> Result<(), Status> {
    match req.peer_certs() {
        Some(certs) if !certs.is_empty() => Ok(()),
        _ => Err(Status::unauthenticated("a peer certificate is required")),
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn deliver(
        &self,
        req: Request<pb::RaftBatch>,
    ) -> Result<Response<pb::DeliverAck>, Status> {
        require_peer_cert(&req)?;
        let tx = self.store.sender();
        for bytes in req.into_inner().messages {
            let msg = Message::parse_from_bytes(&bytes)
                .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
            tx.send(Input::Step(Box::new(msg)))
                .map_err(|_| Status::unavailable("the store is stopping"))?;
        }
        Ok(Response::new(pb::DeliverAck {}))
    }

    async fn propose(
        &self,
        req: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        require_peer_cert(&req)?;
        let command: Command = command::decode(&req.into_inner().command)
            .map_err(|e| Status::invalid_argument(format!("bad command: {e}")))?;
        // Only the local leader answers: no forwarding chains.
        let result = self.store.propose_local(command).await;
        Ok(Response::new(pb::ProposeResponse {
            result: command::encode(&result),
        }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        require_peer_cert(&req)?;
        let r = req.into_inner();
        if !token_matches(&r.token, &self.token) {
            return Err(Status::permission_denied(
                "the join token does not match this cluster's",
            ));
        }
        if !self.store.is_leader() {
            // Hand the request on to the leader, once.
            let leader = self.store.leader();
            let mut client = self
                .transport
                .client_for(leader)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            return client.join(r).await;
        }
        if let Some(existing) = self
            .store
            .members()
            .into_iter()
            .find(|m| m.peer_urls.first() == Some(&r.peer_url))
        {
            return Err(Status::already_exists(format!(
                "member {} ({:x}) already uses peer URL {}; remove it first",
                existing.name, existing.id, r.peer_url
            )));
        }
        let member = Member {
            id: super::random_id(),
            name: r.name,
            peer_urls: vec![r.peer_url],
            client_urls: vec![r.client_url],
        };
        let id = member.id;
        let members = self
            .store
            .add_member(member)
            .await
            .map_err(super::etcd_api::status)?;
        Ok(Response::new(pb::JoinResponse {
            member_id: id,
            cluster_id: self.store.identity().cluster_id,
            members: command::encode(&members),
        }))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        require_peer_cert(&req)?;
        let result = self
            .store
            .remove_member_local(req.into_inner().member_id)
            .await;
        Ok(Response::new(pb::RemoveMemberResponse {
            result: command::encode(&result),
        }))
    }

    async fn bootstrap(
        &self,
        req: Request<pb::BootstrapRequest>,
    ) -> Result<Response<pb::BootstrapResponse>, Status> {
        if !token_matches(&req.into_inner().token, &self.token) {
            tracing::warn!("refused a bootstrap request with a wrong token");
            return Err(Status::permission_denied(
                "the token does not match this cluster's",
            ));
        }
        let read = |name: &str| {
            std::fs::read_to_string(self.cluster_tls_dir.join(name)).unwrap_or_default()
        };
        Ok(Response::new(pb::BootstrapResponse {
            ca_cert_pem: self.ca_cert_pem.clone(),
            ca_key_pem: self.ca_key_pem.clone(),
            server_ca_cert_pem: read("server-ca.crt"),
            server_ca_key_pem: read("server-ca.key"),
            client_ca_cert_pem: read("client-ca.crt"),
            client_ca_key_pem: read("client-ca.key"),
            service_key_pem: read("service.key"),
        }))
    }

    async fn keep_alive(
        &self,
        req: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::KeepAliveResponse>, Status> {
        require_peer_cert(&req)?;
        let result = self
            .store
            .lease_keep_alive_local(req.into_inner().lease_id)
            .await;
        Ok(Response::new(pb::KeepAliveResponse {
            result: command::encode(&result),
        }))
    }
}

/// Constant-time comparison of the secret part of a token.
fn token_matches(given: &str, expected: &str) -> bool {
    let a = secret_of(given).as_bytes();
    let b = secret_of(expected).as_bytes();
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// k3s tokens look like `K10<hash>::server:<secret>`; a bare secret is accepted too.
fn secret_of(token: &str) -> &str {
    token.rsplit_once(':').map(|(_, s)| s).unwrap_or(token)
}

/// Serves peer traffic on `listener` until `shutdown`.
pub async fn serve(
    service: PeerService,
    tls: PeerTls,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        },
    );
    Server::builder()
        .tls_config(
            ServerTlsConfig::new()
                // The chain includes the CA so a joiner can check it against its token.
                .identity(Identity::from_pem(
                    format!("{}{}", tls.cert_pem, tls.ca_pem),
                    &tls.key_pem,
                ))
                .client_ca_root(Certificate::from_pem(&tls.ca_pem))
                .client_auth_optional(true),
        )?
        .add_service(
            PeerServer::new(service)
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// What a joining server learns from the leader.
pub struct Joined {
    pub member_id: u64,
    pub cluster_id: u64,
    pub members: Vec<Member>,
}

/// Connects to the server named by `--server`, failing with a message naming it.
pub(crate) async fn connect(url: &str, tls: ClientTlsConfig) -> Result<Channel> {
    Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::InvalidArgument(format!("--server {url}: {e}")))?
        .tls_config(tls)
        .map_err(|e| Error::InvalidArgument(format!("peer TLS: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| Error::Io(format!("cannot reach {url}: {e}")))
}

/// Asks the server at `url` to add this server as a member.
pub async fn join(url: &str, tls: &PeerTls, token: &str, me: pb::JoinRequest) -> Result<Joined> {
    let mut client = PeerClient::new(connect(url, tls.client()).await?);
    let resp = client
        .join(pb::JoinRequest {
            token: token.to_string(),
            ..me
        })
        .await
        .map_err(|s| Error::InvalidArgument(format!("{url} refused the join: {}", s.message())))?
        .into_inner();
    let members: Vec<Member> =
        command::decode(&resp.members).map_err(|e| Error::Io(format!("join answer: {e}")))?;
    Ok(Joined {
        member_id: resp.member_id,
        cluster_id: resp.cluster_id,
        members,
    })
}
