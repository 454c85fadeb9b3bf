//! Relays questions outside the cluster zone to the host's resolvers (the `nameserver` lines
//! of /etc/resolv.conf, in order), over UDP or TCP as they came; the first answer wins.
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const TIMEOUT: Duration = Duration::from_secs(2);

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
}

impl Forwarder {
    /// The resolvers of a resolv.conf, without `own` (never forward to ourselves).
    pub fn from_resolv_conf(path: &Path, own: SocketAddr) -> Forwarder {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Forwarder {
            upstreams: parse_resolv_conf(&text)
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 53))
                .filter(|a| *a != own)
                .collect(),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The upstream's answer, or None when none answered in time.
    pub async fn forward(&self, query: &[u8], udp: bool) -> Option<Vec<u8>> {
        for up in &self.upstreams {
            let r = if udp {
                tokio::time::timeout(TIMEOUT, over_udp(*up, query)).await
            } else {
                tokio::time::timeout(TIMEOUT, over_tcp(*up, query)).await
            };
            match r {
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "upstream DNS failed"),
                Err(_) => tracing::debug!(upstream = %up, "upstream DNS timed out"),
            }
        }
        None
    }
}

pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}

async fn over_udp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if up.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind).await?;
    s.connect(up).await?;
    s.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = s.recv(&mut buf).await?;
        // Only the answer to this question (same id).
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            return Ok(buf[..n].to_vec());
        }
    }
}

async fn over_tcp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(up).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    s.write_u16(len).await?;
    s.write_all(query).await?;
    let n = s.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_come_from_nameserver_lines() {
        let text =
            "# generated\nsearch lan\nnameserver 10.255.255.53\nnameserver  ::1\noptions ndots:1\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.255.255.53".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }
}
