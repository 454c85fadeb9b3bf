//! Container logs from the CRI log files (`<time> <stream> <F|P> <content>` lines, written
//! by containerd under /var/log/pods): kubectl's options (tailLines, sinceSeconds/sinceTime,
//! timestamps, limitBytes) applied, and `follow` streaming what is appended until the
//! container stops.
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::agent::cri::{Cri, State};

/// How often a followed log is checked for more lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<u64>,
    pub since: Option<OffsetDateTime>,
}

fn truthy(v: &str) -> bool {
    matches!(v, "true" | "1" | "True" | "TRUE")
}

impl LogOptions {
    /// From the kubelet's query (`follow=true&tailLines=5&...`); a message naming the
    /// parameter when a value is not usable.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut o = LogOptions::default();
        let number = |k: &str, v: &str| -> Result<i64, String> {
            v.parse::<i64>()
                .map_err(|_| format!("{k}: invalid value {v:?}: not an integer"))
        };
        for (k, v) in pairs {
            match k.as_str() {
                "follow" => o.follow = truthy(v),
                "previous" => o.previous = truthy(v),
                "timestamps" => o.timestamps = truthy(v),
                "tailLines" => o.tail_lines = Some(number(k, v)?.max(0) as usize),
                "limitBytes" => o.limit_bytes = Some(number(k, v)?.max(1) as u64),
                "sinceSeconds" => {
                    let s = number(k, v)?.max(0);
                    o.since = Some(OffsetDateTime::now_utc() - time::Duration::seconds(s));
                }
                "sinceTime" => {
                    o.since = Some(
                        OffsetDateTime::parse(v, &Rfc3339)
                            .map_err(|e| format!("sinceTime: invalid value {v:?}: {e}"))?,
                    )
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// One line of a CRI log file.
#[derive(Debug, PartialEq)]
struct Entry<'a> {
    time: &'a str,
    partial: bool,
    content: &'a [u8],
}

fn parse_entry(line: &[u8]) -> Option<Entry<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?;
    let _stream = fields.next()?;
    let tag = fields.next()?;
    let content = fields.next().unwrap_or_default();
    Some(Entry {
        time,
        partial: tag == b"P",
        content,
    })
}

/// What the client sees of one entry.
fn render(e: &Entry<'_>, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(e.time.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(e.content);
    if !e.partial {
        out.push(b'\n');
    }
}

fn after_since(e: &Entry<'_>, since: Option<OffsetDateTime>) -> bool {
    match since {
        None => true,
        Some(since) => OffsetDateTime::parse(e.time, &Rfc3339)
            .map(|t| t >= since)
            .unwrap_or(true),
    }
}

/// The complete lines of `data` (a trailing incomplete line stays for later).
fn lines(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            out.push(&data[start..i]);
            start = i + 1;
        }
    }
    (out, start)
}

/// The log as it is now, with tail and since applied; and how many bytes were consumed.
fn initial(data: &[u8], opts: &LogOptions) -> (Vec<u8>, usize) {
    let (all, consumed) = lines(data);
    let entries: Vec<Entry<'_>> = all
        .iter()
        .filter_map(|l| parse_entry(l))
        .filter(|e| after_since(e, opts.since))
        .collect();
    let skip = opts
        .tail_lines
        .map(|n| entries.len().saturating_sub(n))
        .unwrap_or(0);
    let mut out = Vec::new();
    for e in &entries[skip..] {
        render(e, opts.timestamps, &mut out);
    }
    (out, consumed)
}

struct Follow {
    path: PathBuf,
    opts: LogOptions,
    cri: Cri,
    container_id: String,
    offset: u64,
    carry: Vec<u8>,
    sent: u64,
    started: bool,
    done: bool,
}

impl Follow {
    /// Bytes appended since the last read (None when the file cannot be read any more).
    async fn read_more(&mut self) -> Option<Vec<u8>> {
        let mut f = tokio::fs::File::open(&self.path).await.ok()?;
        let len = f.metadata().await.ok()?.len();
        if len < self.offset {
            // Truncated or replaced: start over from its beginning.
            self.offset = 0;
            self.carry.clear();
        }
        f.seek(std::io::SeekFrom::Start(self.offset)).await.ok()?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).await.ok()?;
        self.offset += buf.len() as u64;
        Some(buf)
    }

    /// Renders complete lines of `fresh` (with what was carried over).
    fn take_lines(&mut self, fresh: Vec<u8>) -> Vec<u8> {
        self.carry.extend_from_slice(&fresh);
        let (ls, consumed) = lines(&self.carry);
        let mut out = Vec::new();
        for l in ls {
            if let Some(e) = parse_entry(l).filter(|e| after_since(e, self.opts.since)) {
                render(&e, self.opts.timestamps, &mut out);
            }
        }
        self.carry.drain(..consumed);
        out
    }

    /// Caps `out` at limitBytes; marks the stream done when the cap is reached.
    fn limit(&mut self, mut out: Vec<u8>) -> Vec<u8> {
        if let Some(limit) = self.opts.limit_bytes {
            let left = limit.saturating_sub(self.sent) as usize;
            if out.len() >= left {
                out.truncate(left);
                self.done = true;
            }
        }
        self.sent += out.len() as u64;
        out
    }

    async fn running(&self) -> bool {
        match self.cri.container_status(&self.container_id).await {
            Ok(d) => d.state == State::Running || d.state == State::Created,
            Err(_) => false,
        }
    }

    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            // The rotated files first (oldest to newest), then the current one, as the
            // kubelet reads them; following goes on in the current file only.
            let mut data = Vec::new();
            for old in crate::agent::kubelet::log_rotation::rotated(&self.path) {
                data.extend(tokio::fs::read(&old).await.unwrap_or_default());
                if data.last().is_some_and(|b| *b != b'\n') {
                    data.push(b'\n');
                }
            }
            let current = tokio::fs::read(&self.path).await.unwrap_or_default();
            self.offset = current.len() as u64;
            data.extend(current);
            let (out, consumed) = initial(&data, &self.opts);
            self.carry = data[consumed..].to_vec();
            if !self.opts.follow {
                self.done = true;
            }
            return Some(self.limit(out));
        }
        loop {
            let fresh = self.read_more().await?;
            let out = self.take_lines(fresh);
            if !out.is_empty() {
                return Some(self.limit(out));
            }
            if !self.running().await {
                // One last look: lines written just before the container stopped.
                let fresh = self.read_more().await?;
                let out = self.take_lines(fresh);
                self.done = true;
                return (!out.is_empty()).then(|| self.limit(out));
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

/// The log of the container whose CRI log file is `path`, as a byte stream.
pub fn stream(
    path: PathBuf,
    opts: LogOptions,
    cri: Cri,
    container_id: String,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let state = Follow {
        path,
        opts,
        cri,
        container_id,
        offset: 0,
        carry: Vec::new(),
        sent: 0,
        started: false,
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok(Bytes::from(chunk)), s))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &[u8] = b"2024-05-01T10:00:00.000000001Z stdout F one\n\
2024-05-01T10:00:01.5Z stderr F two\n\
2024-05-01T10:00:02Z stdout P thr\n\
2024-05-01T10:00:02.1Z stdout F ee\n\
2024-05-01T10:00:03Z stdout F four\n\
2024-05-01T10:00:04Z stdout F fi";

    #[test]
    fn lines_render_with_partials_joined_and_the_unfinished_one_kept() {
        let (out, consumed) = initial(LOG, &LogOptions::default());
        assert_eq!(String::from_utf8(out).unwrap(), "one\ntwo\nthree\nfour\n");
        assert_eq!(&LOG[consumed..], b"2024-05-01T10:00:04Z stdout F fi");
    }

    #[test]
    fn tail_since_and_timestamps_select_and_prefix() {
        let opts = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(initial(LOG, &opts).0, b"ee\nfour\n");
        let opts = LogOptions {
            since: Some(OffsetDateTime::parse("2024-05-01T10:00:02.05Z", &Rfc3339).unwrap()),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(initial(LOG, &opts).0).unwrap(),
            "2024-05-01T10:00:02.1Z ee\n2024-05-01T10:00:03Z four\n"
        );
        let opts = LogOptions {
            tail_lines: Some(0),
            ..Default::default()
        };
        assert!(initial(LOG, &opts).0.is_empty());
    }

    #[test]
    fn options_come_from_the_query_with_errors_naming_the_parameter() {
        let q = |s: &str| serde_urlencoded::from_str::<Vec<(String, String)>>(s).unwrap();
        let o = LogOptions::from_query(&q("follow=true&tailLines=3&limitBytes=10")).unwrap();
        assert!(o.follow && o.tail_lines == Some(3) && o.limit_bytes == Some(10));
        let e = LogOptions::from_query(&q("tailLines=x")).unwrap_err();
        assert!(e.starts_with("tailLines"), "{e}");
    }
}
