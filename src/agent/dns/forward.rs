//! Relays questions outside the cluster zone to the host's resolvers (the `nameserver` lines
//! of /etc/resolv.conf, in order), over UDP or TCP as they came; the first answer wins.
//! Answers are cached for their TTL (at most 30 s; NXDOMAIN for 5 s), as CoreDNS's cache
//! plugin does for a cluster's repeated lookups.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const TIMEOUT: Duration = Duration::from_secs(2);

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: AnswerCache,
}

const CACHE_MAX_TTL: Duration = Duration::from_secs(30);
const CACHE_NEGATIVE_TTL: Duration = Duration::from_secs(5);
const CACHE_ENTRIES: usize = 2048;

/// A question: name (lowercase), type, class, and whether it came over UDP.
type QuestionKey = (String, u16, u16, bool);

/// Answers by question, with their expiry.
#[derive(Default)]
pub struct AnswerCache {
    entries: Mutex<HashMap<QuestionKey, (Vec<u8>, Instant)>>,
}

/// The cache key of a query: its first question.
fn question(query: &[u8]) -> Option<(String, u16, u16)> {
    let m = Message::from_vec(query).ok()?;
    let q = m.queries.first()?;
    Some((
        q.name().to_ascii().to_lowercase(),
        u16::from(q.query_type()),
        u16::from(q.query_class()),
    ))
}

impl AnswerCache {
    /// A cached answer to `query`, its id set to the query's.
    pub fn get(&self, query: &[u8], udp: bool, now: Instant) -> Option<Vec<u8>> {
        let (name, t, c) = question(query)?;
        let mut entries = self.entries.lock().ok()?;
        let key = (name, t, c, udp);
        match entries.get(&key) {
            Some((answer, expires)) if *expires > now => {
                let mut a = answer.clone();
                if a.len() >= 2 && query.len() >= 2 {
                    a[..2].copy_from_slice(&query[..2]);
                }
                Some(a)
            }
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Keeps an answer for its smallest TTL (capped), NXDOMAIN briefly, failures not at all.
    pub fn put(&self, query: &[u8], udp: bool, answer: &[u8], now: Instant) {
        let (Some((name, t, c)), Ok(reply)) = (question(query), Message::from_vec(answer)) else {
            return;
        };
        let ttl = match reply.metadata.response_code {
            ResponseCode::NoError => reply
                .answers
                .iter()
                .chain(reply.authorities.iter())
                .map(|r| Duration::from_secs(u64::from(r.ttl)))
                .min()
                .unwrap_or(CACHE_NEGATIVE_TTL)
                .min(CACHE_MAX_TTL),
            ResponseCode::NXDomain => CACHE_NEGATIVE_TTL,
            _ => return,
        };
        if ttl.is_zero() || reply.metadata.truncation {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= CACHE_ENTRIES {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert((name, t, c, udp), (answer.to_vec(), now + ttl));
    }
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
            cache: AnswerCache::default(),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The upstream's answer, or None when none answered in time.
    pub async fn forward(&self, query: &[u8], udp: bool) -> Option<Vec<u8>> {
        if let Some(hit) = self.cache.get(query, udp, Instant::now()) {
            return Some(hit);
        }
        let answer = self.ask_upstreams(query, udp).await?;
        self.cache.put(query, udp, &answer, Instant::now());
        Some(answer)
    }

    async fn ask_upstreams(&self, query: &[u8], udp: bool) -> Option<Vec<u8>> {
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
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    #[test]
    fn answers_are_cached_for_their_ttl_under_the_askers_id() {
        let cache = AnswerCache::default();
        let now = Instant::now();
        let q = query(7, "example.org.");
        let mut reply = Message::response(7, OpCode::Query);
        reply.add_query(Query::query(
            Name::from_ascii("example.org.").unwrap(),
            RecordType::A,
        ));
        reply.add_answer(Record::from_rdata(
            Name::from_ascii("example.org.").unwrap(),
            10,
            RData::A(A("192.0.2.1".parse().unwrap())),
        ));
        cache.put(&q, true, &reply.to_vec().unwrap(), now);
        let again = query(99, "EXAMPLE.org.");
        let hit = cache
            .get(&again, true, now + Duration::from_secs(9))
            .unwrap();
        let m = Message::from_vec(&hit).unwrap();
        assert_eq!(m.metadata.id, 99);
        assert_eq!(m.answers.len(), 1);
        assert!(cache
            .get(&again, true, now + Duration::from_secs(11))
            .is_none());
        // Over TCP it is another entry (an answer cut for UDP is not reused there).
        assert!(cache.get(&again, false, now).is_none());
        // Failures are not kept.
        let fail = Message::error_msg(7, OpCode::Query, ResponseCode::ServFail);
        let q2 = query(8, "broken.example.");
        cache.put(&q2, true, &fail.to_vec().unwrap(), now);
        assert!(cache.get(&q2, true, now).is_none());
    }

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
