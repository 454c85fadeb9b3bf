//! What a probe or a lifecycle hook does to a container: exec (CRI ExecSync), httpGet,
//! tcpSocket, grpc (the gRPC health-checking protocol) or sleep, with its timeout, ending in
//! success or a message saying what failed (as the kubelet words it).
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{
    Container, ExecAction, GRPCAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::agent::cri::Cri;

/// One check or hook action, resolved against its container (named ports become numbers).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Exec(Vec<String>),
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
        https: bool,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Grpc {
        port: u16,
        service: String,
    },
    Sleep(Duration),
}

fn port_of(c: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("couldn't find port {name:?} in the container's ports")),
    }
}

fn exec(e: &ExecAction) -> Action {
    Action::Exec(e.command.clone().unwrap_or_default())
}

fn http(c: &Container, h: &HTTPGetAction) -> Result<Action, String> {
    let path = h.path.clone().unwrap_or_default();
    Ok(Action::Http {
        host: h.host.clone().filter(|h| !h.is_empty()),
        port: port_of(c, &h.port)?,
        path: if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        },
        headers: h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        https: h.scheme.as_deref() == Some("HTTPS"),
    })
}

fn tcp(c: &Container, t: &TCPSocketAction) -> Result<Action, String> {
    Ok(Action::Tcp {
        host: t.host.clone().filter(|h| !h.is_empty()),
        port: port_of(c, &t.port)?,
    })
}

fn grpc(g: &GRPCAction) -> Result<Action, String> {
    Ok(Action::Grpc {
        port: u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?,
        service: g.service.clone().unwrap_or_default(),
    })
}

impl Action {
    pub fn of_probe(c: &Container, p: &Probe) -> Result<Action, String> {
        if let Some(e) = &p.exec {
            Ok(exec(e))
        } else if let Some(h) = &p.http_get {
            http(c, h)
        } else if let Some(t) = &p.tcp_socket {
            tcp(c, t)
        } else if let Some(g) = &p.grpc {
            grpc(g)
        } else {
            Err("the probe has no handler".into())
        }
    }

    pub fn of_hook(c: &Container, h: &LifecycleHandler) -> Result<Action, String> {
        if let Some(e) = &h.exec {
            Ok(exec(e))
        } else if let Some(g) = &h.http_get {
            http(c, g)
        } else if let Some(t) = &h.tcp_socket {
            tcp(c, t)
        } else if let Some(s) = &h.sleep {
            Ok(Action::Sleep(Duration::from_secs(s.seconds.max(0) as u64)))
        } else {
            Err("the hook has no handler".into())
        }
    }

    /// Runs the action against container `id` whose pod has `pod_ip`; Ok carries output
    /// worth showing, Err why it failed.
    pub async fn run(
        &self,
        cri: &Cri,
        id: &str,
        pod_ip: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let run = async {
            match self {
                Action::Exec(cmd) => {
                    let r = cri
                        .exec_sync(id, cmd.clone(), timeout)
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
                    out.push_str(&String::from_utf8_lossy(&r.stderr));
                    if r.exit_code == 0 {
                        Ok(out)
                    } else {
                        Err(format!(
                            "command {cmd:?} exited with {}: {}",
                            r.exit_code,
                            out.trim()
                        ))
                    }
                }
                Action::Http {
                    host,
                    port,
                    path,
                    headers,
                    https,
                } => {
                    let host = host.as_deref().unwrap_or(pod_ip);
                    http_get(host, *port, path, headers, *https).await
                }
                Action::Tcp { host, port } => {
                    let host = host.as_deref().unwrap_or(pod_ip);
                    TcpStream::connect((host, *port))
                        .await
                        .map(|_| String::new())
                        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
                }
                Action::Grpc { port, service } => grpc_check(pod_ip, *port, service).await,
                Action::Sleep(d) => {
                    tokio::time::sleep(*d).await;
                    Ok(String::new())
                }
            }
        };
        // Sleep hooks run for their own duration; everything else within the timeout.
        let limit = match self {
            Action::Sleep(d) => *d + Duration::from_secs(1),
            _ => timeout,
        };
        match tokio::time::timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timeout: failed to finish within {}s",
                limit.as_secs()
            )),
        }
    }
}

/// Runs a lifecycle hook of container `c` (runtime id `id`) in sandbox `sandbox_id`.
pub async fn run_hook(
    cri: &Cri,
    c: &Container,
    hook: &LifecycleHandler,
    id: &str,
    sandbox_id: &str,
    timeout: Duration,
) -> Result<String, String> {
    let ip = cri
        .sandbox_ips(sandbox_id)
        .await
        .unwrap_or_default()
        .into_iter()
        .next()
        .unwrap_or_default();
    Action::of_hook(c, hook)?.run(cri, id, &ip, timeout).await
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    https: bool,
) -> Result<String, String> {
    let scheme = if https { "https" } else { "http" };
    let url = format!("{scheme}://{host}:{port}{path}");
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get {url:?}: dial tcp {host}:{port}: {e}"))?;
    let mut req = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::USER_AGENT, "kube-probe/1.32")
        .header(hyper::header::ACCEPT, "*/*");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("Get {url:?}: {e}"))?;
    let answer = if https {
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        // HTTPS probes check the answer, not the certificate (the kubelet skips verification).
        let tls = TlsConnector::from(Arc::new(crate::tls::insecure::client_config()))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        send(tls, req).await
    } else {
        send(tcp, req).await
    };
    let (status, body) = answer.map_err(|e| format!("Get {url:?}: {e}"))?;
    if (200..400).contains(&status) {
        Ok(body)
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

/// One request on a fresh connection: the status and (the start of) the body.
async fn send<IO>(
    io: IO,
    req: hyper::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<(u16, String), hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection lives only as long as this probe (the caller's timeout bounds it).
    let conn = tokio::spawn(conn);
    let result = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&body[..body.len().min(10 * 1024)]).into_owned();
        Ok((status, text))
    }
    .await;
    conn.abort();
    result
}

async fn grpc_check(host: &str, port: u16, service: &str) -> Result<String, String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
        .map_err(|e| e.to_string())?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("failed to connect service \"{host}:{port}\": {e}"))?;
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| format!("health rpc failed: {}", s.message()))?
        .into_inner();
    if r.status == ServingStatus::Serving as i32 {
        Ok(String::new())
    } else {
        let status = ServingStatus::try_from(r.status)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| r.status.to_string());
        Err(format!("service unhealthy (responded with \"{status}\")"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn named_ports_resolve_against_the_container() {
        let c = Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("web".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let probe = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("web".into()),
                path: Some("healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            Action::of_probe(&c, &probe).unwrap(),
            Action::Http {
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![],
                https: false
            }
        );
        let bad = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("nope".into()),
                host: None,
            }),
            ..Default::default()
        };
        assert!(Action::of_probe(&c, &bad).unwrap_err().contains("nope"));
    }

    #[tokio::test]
    async fn http_and_tcp_checks_against_a_real_listener() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "500 Internal Server Error"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
                s.write_all(body.as_bytes()).await.unwrap();
            }
        });
        assert_eq!(
            http_get("127.0.0.1", port, "/", &[], false).await.unwrap(),
            "ok"
        );
        let e = http_get("127.0.0.1", port, "/", &[], false)
            .await
            .unwrap_err();
        assert_eq!(e, "HTTP probe failed with statuscode: 500");
        server.await.unwrap();
        let closed = http_get("127.0.0.1", port, "/", &[], false)
            .await
            .unwrap_err();
        assert!(closed.contains("dial tcp"), "{closed}");
    }
}
