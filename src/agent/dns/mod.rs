//! Cluster DNS in the agent (no CoreDNS pod): a UDP and TCP DNS server on `<node-ip>:<dns-port>`
//! (the service proxy forwards the cluster DNS address there) answering the cluster zone from
//! Services and EndpointSlices watched through the API, the host's /etc/hosts names, and
//! relaying everything else to the host's resolvers from /etc/resolv.conf.
pub mod forward;
pub mod zone;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::forward::Forwarder;
use self::zone::{Answer, Zone};
use crate::agent::mirror::object_key;

/// What the DNS server is told.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    pub domain: String,
    pub resolv_conf: PathBuf,
    pub hosts_file: PathBuf,
}

/// The sockets, bound before the agent's tasks start so a taken port fails the start.
pub struct DnsSockets {
    udp: UdpSocket,
    tcp: TcpListener,
}

pub fn bind(listen: SocketAddr) -> anyhow::Result<DnsSockets> {
    let what = || {
        format!(
            "failed to listen on {listen} for cluster DNS (choose another port with --dns-port)"
        )
    };
    let udp = std::net::UdpSocket::bind(listen).with_context(what)?;
    udp.set_nonblocking(true)?;
    let tcp = std::net::TcpListener::bind(listen).with_context(what)?;
    tcp.set_nonblocking(true)?;
    Ok(DnsSockets {
        udp: UdpSocket::from_std(udp)?,
        tcp: TcpListener::from_std(tcp)?,
    })
}

/// Answers one DNS message (wire format); None when it cannot be parsed at all.
pub async fn respond(
    zone: &RwLock<Zone>,
    forwarder: &Forwarder,
    query: &[u8],
    udp: bool,
) -> Option<Vec<u8>> {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            // FORMERR needs at least the id.
            let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    if msg.metadata.message_type != MessageType::Query || msg.metadata.op_code != OpCode::Query {
        return Message::error_msg(msg.metadata.id, msg.metadata.op_code, ResponseCode::NotImp)
            .to_vec()
            .ok();
    }
    let Some(q) = msg.queries.first().cloned() else {
        return Message::error_msg(msg.metadata.id, OpCode::Query, ResponseCode::FormErr)
            .to_vec()
            .ok();
    };
    let (answer, soa) = match zone.read() {
        Ok(z) => (z.answer(q.name(), q.query_type()), z.soa()),
        Err(_) => (Answer::Forward, None),
    };
    let mut reply = Message::response(msg.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = msg.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    match answer {
        Answer::Forward => {
            return Some(match forwarder.forward(query, udp).await {
                Some(r) => r,
                None => {
                    reply.metadata.response_code = ResponseCode::ServFail;
                    reply.to_vec().ok()?
                }
            });
        }
        Answer::NxDomain => {
            reply.metadata.authoritative = true;
            reply.metadata.response_code = ResponseCode::NXDomain;
            reply.authorities.extend(soa);
        }
        Answer::Records(records) => {
            reply.metadata.authoritative = true;
            if records.is_empty() {
                reply.authorities.extend(soa);
            }
            reply.answers = records;
        }
    }
    let bytes = reply.to_vec().ok()?;
    let limit = msg
        .edns
        .as_ref()
        .map(|e| usize::from(e.max_payload()))
        .unwrap_or(512)
        .max(512);
    if udp && bytes.len() > limit {
        return reply.truncate().to_vec().ok();
    }
    Some(bytes)
}

/// Serves cluster DNS until shutdown.
pub async fn run(
    client: kube::Client,
    config: DnsConfig,
    sockets: DnsSockets,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let zone = Arc::new(RwLock::new(Zone::new(&config.domain)));
    let forwarder = Arc::new(Forwarder::from_resolv_conf(
        &config.resolv_conf,
        config.listen,
    ));
    tracing::info!(listen = %config.listen, upstreams = ?forwarder.upstreams(), "cluster DNS serving");
    let tracker = TaskTracker::new();
    let udp = Arc::new(sockets.udp);
    let watch = follow(
        client,
        zone.clone(),
        config.hosts_file.clone(),
        shutdown.clone(),
    );
    let serve_udp = {
        let (zone, forwarder, udp, tracker, shutdown) = (
            zone.clone(),
            forwarder.clone(),
            udp.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = udp.recv_from(&mut buf) => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(error = %e, "dns receive failed");
                            continue;
                        }
                    },
                };
                let query = buf[..n].to_vec();
                let (zone, forwarder, udp) = (zone.clone(), forwarder.clone(), udp.clone());
                tracker.spawn(async move {
                    if let Some(r) = respond(&zone, &forwarder, &query, true).await {
                        let _ = udp.send_to(&r, peer).await;
                    }
                });
            }
        }
    };
    let serve_tcp = {
        let (zone, forwarder, tracker, shutdown) = (
            zone.clone(),
            forwarder.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        let listener = sockets.tcp;
        async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(error = %e, "dns accept failed");
                            continue;
                        }
                    },
                };
                let (zone, forwarder, stop) = (zone.clone(), forwarder.clone(), shutdown.clone());
                tracker.spawn(async move {
                    loop {
                        let read = async {
                            let len = stream.read_u16().await.ok()?;
                            let mut q = vec![0u8; usize::from(len)];
                            stream.read_exact(&mut q).await.ok()?;
                            Some(q)
                        };
                        let q = tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(10)) => return,
                            q = read => match q { Some(q) => q, None => return },
                        };
                        let Some(r) = respond(&zone, &forwarder, &q, false).await else {
                            return;
                        };
                        let Ok(len) = u16::try_from(r.len()) else {
                            return;
                        };
                        if stream.write_u16(len).await.is_err()
                            || stream.write_all(&r).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        }
    };
    tokio::join!(watch, serve_udp, serve_tcp);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

enum Input {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
}

/// Keeps the zone in line with the API (and /etc/hosts, re-read every 30 s).
async fn follow(
    client: kube::Client,
    zone: Arc<RwLock<Zone>>,
    hosts_file: PathBuf,
    shutdown: CancellationToken,
) {
    if !crate::agent::mirror::wait_until_listable(&Api::<Service>::all(client.clone()), &shutdown)
        .await
    {
        return;
    }
    let svc = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| Input::Service(Box::new(e))));
    let eps = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| Input::Slice(Box::new(e))));
    let mut events = futures::stream::select(svc, eps).boxed();
    let mut hosts_tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hosts_tick.tick() => {
                let text = std::fs::read_to_string(&hosts_file).unwrap_or_default();
                if let Ok(mut z) = zone.write() {
                    z.hosts = zone::parse_hosts(&text);
                }
            }
            ev = events.next() => {
                let Some(ev) = ev else { return };
                let Ok(mut z) = zone.write() else { return };
                match ev {
                    Ok(Input::Service(e)) => {
                        z.services.apply(*e, |s| object_key(&s.metadata));
                    }
                    Ok(Input::Slice(e)) => {
                        let keys = z.slices.apply(*e, |s| object_key(&s.metadata));
                        let z = &mut *z;
                        z.index.update(&keys, &z.slices);
                    }
                    Err(e) => tracing::warn!(error = %e, "cluster DNS watch failed; retrying"),
                }
            }
        }
    }
}
