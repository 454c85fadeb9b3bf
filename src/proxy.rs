//! Forwarding one HTTP request to another server, following a connection upgrade (SPDY,
//! WebSocket) by splicing the two connections: what the API server does toward kubelets
//! (logs, exec, attach, port-forward) and the kubelet toward the CRI streaming server.
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP with {addr}: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("bad upstream request: {0}")]
    Request(#[from] axum::http::Error),
}

/// Where a request goes: `addr` (host:port), over TLS when `tls` is set, to
/// `path_and_query`.
#[derive(Clone)]
pub struct Upstream {
    pub addr: String,
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    pub path_and_query: String,
}

/// The tasks that outlive the handler that started them (the connection to the upstream,
/// spliced upgraded streams): tracked so shutdown can wait for them, and cancelled with it.
#[derive(Clone, Default)]
pub struct Streams {
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Streams {
    pub fn new(shutdown: CancellationToken) -> Self {
        Streams {
            tracker: TaskTracker::new(),
            shutdown,
        }
    }

    fn spawn(
        &self,
        what: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = task => {}
                }
            }
            .instrument(tracing::debug_span!("stream", task = what)),
        );
    }

    /// Waits (at most `grace`) for the tracked streams once nothing new starts.
    pub async fn drain(&self, grace: std::time::Duration) {
        self.tracker.close();
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
    }
}

/// True when the request asks to switch protocols (SPDY or WebSocket).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// Sends `req` to `upstream` and answers with what it answered. A 101 answer splices the
/// caller's upgraded connection to the upstream's until either side closes.
pub async fn forward(
    upstream: &Upstream,
    mut req: Request<Body>,
    streams: &Streams,
) -> Result<Response<Body>, Error> {
    let addr = upstream.addr.clone();
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|source| Error::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let upgrading = is_upgrade(&req);
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut out = Request::builder()
        .method(parts.method)
        .uri(upstream.path_and_query.as_str());
    for (name, value) in parts.headers.iter() {
        // The caller's credentials are for us, not for the upstream.
        if name == header::HOST || name == header::AUTHORIZATION {
            continue;
        }
        out = out.header(name, value);
    }
    let host = HeaderValue::from_str(&addr).unwrap_or(HeaderValue::from_static("localhost"));
    let out = out.header(header::HOST, host).body(body)?;

    let http = |source| Error::Http {
        addr: addr.clone(),
        source,
    };
    let mut resp = match &upstream.tls {
        Some((config, name)) => {
            let tls = TlsConnector::from(config.clone())
                .connect(name.clone(), tcp)
                .await
                .map_err(|source| Error::Tls {
                    addr: addr.clone(),
                    source,
                })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(http)?;
            streams.spawn("upstream connection", async move {
                let _ = conn.with_upgrades().await;
            });
            sender.send_request(out).await.map_err(http)?
        }
        None => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(http)?;
            streams.spawn("upstream connection", async move {
                let _ = conn.with_upgrades().await;
            });
            sender.send_request(out).await.map_err(http)?
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            streams.spawn("spliced upgrade", async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        if let Err(e) =
                            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                        {
                            tracing::debug!(error = %e, "upgraded stream ended");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
                }
            });
        }
        return Ok(resp.map(|_| Body::empty()));
    }
    Ok(resp.map(Body::new))
}
