//! exec, attach and port-forward: the CRI runtime hands out a one-time URL on its streaming
//! server (containerd's, on 127.0.0.1), and the caller's upgraded connection (SPDY or
//! WebSocket) is spliced to it, so the runtime speaks the stream protocol end to end.
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};

use super::{bad_request, container_of, internal, query_pairs, sandbox_of, ApiState, KubeletError};
use crate::agent::cri::StreamIo;
use crate::proxy::{self, Upstream};

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "true" | "True" | "TRUE")
}

/// The streams asked for, under the kubelet's names (input/output/error/tty) or kubectl's.
fn stream_io(pairs: &[(String, String)]) -> StreamIo {
    let on = |names: &[&str]| {
        pairs
            .iter()
            .any(|(k, v)| names.contains(&k.as_str()) && truthy(v))
    };
    StreamIo {
        stdin: on(&["input", "stdin"]),
        stdout: on(&["output", "stdout"]),
        stderr: on(&["error", "stderr"]),
        tty: on(&["tty"]),
    }
}

/// Splits the runtime's `http://host:port/path` into where to connect and what to ask.
fn upstream(url: &str) -> Result<Upstream, KubeletError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| internal(format!("unexpected streaming URL {url:?}")))?;
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok(Upstream {
        addr: addr.to_string(),
        tls: None,
        path_and_query: path.to_string(),
    })
}

async fn splice(s: &ApiState, url: &str, request: Request) -> Result<Response, KubeletError> {
    let target = upstream(url)?;
    if !proxy::is_upgrade(&request) {
        return Err(bad_request(
            "Upgrade request required: this endpoint speaks SPDY or WebSocket",
        ));
    }
    let resp = proxy::forward(&target, request, &s.streams)
        .await
        .map_err(internal)?;
    Ok(resp.into_response())
}

pub async fn exec(
    State(s): State<ApiState>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    request: Request,
) -> Result<Response, KubeletError> {
    let pairs = query_pairs(&request);
    let cmd: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if cmd.is_empty() {
        return Err(bad_request("you must specify at least 1 command"));
    }
    let (_, c) = container_of(&s.kubelet, &ns, &pod, &container).await?;
    tracing::debug!(namespace = %ns, pod = %pod, container = %container, "exec");
    let url = s
        .kubelet
        .cri
        .exec_url(&c.id, cmd, stream_io(&pairs))
        .await
        .map_err(internal)?;
    splice(&s, &url, request).await
}

pub async fn attach(
    State(s): State<ApiState>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    request: Request,
) -> Result<Response, KubeletError> {
    let pairs = query_pairs(&request);
    let (_, c) = container_of(&s.kubelet, &ns, &pod, &container).await?;
    let url = s
        .kubelet
        .cri
        .attach_url(&c.id, stream_io(&pairs))
        .await
        .map_err(internal)?;
    splice(&s, &url, request).await
}

pub async fn port_forward(
    State(s): State<ApiState>,
    Path((ns, pod)): Path<(String, String)>,
    request: Request,
) -> Result<Response, KubeletError> {
    let pairs = query_pairs(&request);
    let mut ports = Vec::new();
    for (k, v) in &pairs {
        if k == "port" {
            ports.push(
                v.parse::<i32>()
                    .map_err(|_| bad_request(format!("invalid port {v:?}")))?,
            );
        }
    }
    let sandbox = sandbox_of(&s.kubelet.cri, &ns, &pod).await?;
    let url = s
        .kubelet
        .cri
        .port_forward_url(&sandbox.id, ports)
        .await
        .map_err(internal)?;
    splice(&s, &url, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_urls_split_into_address_and_path() {
        let u = upstream("http://127.0.0.1:41234/exec/AbCd").unwrap();
        assert_eq!(u.addr, "127.0.0.1:41234");
        assert_eq!(u.path_and_query, "/exec/AbCd");
        assert!(upstream("https://x/y").is_err());
    }

    #[test]
    fn streams_are_read_under_either_name() {
        let pairs = vec![
            ("input".to_string(), "1".to_string()),
            ("stdout".to_string(), "true".to_string()),
            ("tty".to_string(), "0".to_string()),
        ];
        let io = stream_io(&pairs);
        assert!(io.stdin && io.stdout && !io.stderr && !io.tty);
    }
}
