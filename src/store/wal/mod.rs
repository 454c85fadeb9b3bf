//! The Raft log on disk: append-only, checksummed, segmented files made durable with
//! fdatasync before anything they hold is acknowledged (etcd's WAL design). It holds entries,
//! hard state and the log's starting point; it knows raft-rs's types but not the store's.
//!
//! Format. A segment file `<seq>-<first index>.wal` is preallocated and holds frames:
//! `[len: u32 LE][crc32: u32 LE][payload; len]`, padded to 8 bytes, ended by a zero `len`.
//! A payload is a run of records `[kind: u8][len: u32 LE][bytes]`. Each append writes exactly
//! one frame and then fdatasyncs, and the next frame is written only after that returns, so a
//! damaged frame followed by a valid one is corruption (refuse to start) while a damaged last
//! frame is a torn write that was never acknowledged (truncate it, with a log line).
mod segment;

use std::fs;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use self::segment::{Frame, Segment};
use crate::store::error::{Error, Result};

const RECORD_ENTRY: u8 = 1;
const RECORD_HARD_STATE: u8 = 2;
/// Where the log stands, (index, term) of its last entry: written at the head of every
/// segment so the first remaining segment tells where the log starts.
const RECORD_START: u8 = 3;
/// The log restarts empty after (index, term): a snapshot replaced everything before.
const RECORD_RESET: u8 = 4;

/// What the log held at open time.
#[derive(Debug, Default)]
pub struct Replay {
    pub hard_state: Option<HardState>,
    /// (index, term) of the entry just before the first entry the log holds.
    pub start: (u64, u64),
    pub entries: Vec<Entry>,
}

pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    /// Oldest first; the last one is open for appends.
    segments: Vec<SegmentMeta>,
    active: Segment,
    last_index: u64,
    last_term: u64,
    hard_state: HardState,
    bytes_written: u64,
    frames_written: u64,
}

#[derive(Debug, Clone)]
struct SegmentMeta {
    seq: u64,
    first_index: u64,
    path: PathBuf,
}

fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

fn push_record(buf: &mut Vec<u8>, kind: u8, bytes: &[u8]) {
    buf.push(kind);
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

fn start_record(index: u64, term: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&index.to_le_bytes());
    b[8..].copy_from_slice(&term.to_le_bytes());
    b
}

fn pb_err(path: &Path, offset: u64, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!(
        "{}: record at offset {offset}: {e}",
        path.display()
    ))
}

impl Wal {
    /// Opens the log in `dir` (creating an empty one), replays it, and repairs a torn tail.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Wal, Replay)> {
        fs::create_dir_all(dir)?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((seq, first_index)) = parse_segment_name(&name) {
                segments.push(SegmentMeta {
                    seq,
                    first_index,
                    path: entry.path(),
                });
            } else if name.ends_with(".tmp") {
                // A segment whose creation was interrupted before its rename.
                fs::remove_file(entry.path())?;
            }
        }
        segments.sort_by_key(|s| s.seq);
        if segments.is_empty() {
            let meta = SegmentMeta {
                seq: 1,
                first_index: 1,
                path: dir.join(segment_name(1, 1)),
            };
            let mut seg = Segment::create(&meta.path, segment_bytes)?;
            let mut payload = Vec::new();
            push_record(&mut payload, RECORD_START, &start_record(0, 0));
            seg.append(&payload)?;
            sync_dir(dir)?;
            let wal = Wal {
                dir: dir.to_path_buf(),
                segment_bytes,
                segments: vec![meta],
                active: seg,
                last_index: 0,
                last_term: 0,
                hard_state: HardState::default(),
                bytes_written: 0,
                frames_written: 0,
            };
            return Ok((wal, Replay::default()));
        }

        let mut replay = Replay::default();
        let mut started = false;
        let count = segments.len();
        let mut active = None;
        for (i, meta) in segments.iter().enumerate() {
            let last = i + 1 == count;
            let mut seg = Segment::open(&meta.path)?;
            let frames = seg.read_frames(last)?;
            for Frame { offset, payload } in frames {
                apply_frame(&meta.path, offset, &payload, &mut replay, &mut started)?;
            }
            if last {
                active = Some(seg);
            }
        }
        let active =
            active.ok_or_else(|| Error::Corrupt("write-ahead log has no segment".into()))?;
        if !started {
            return Err(Error::Corrupt(format!(
                "{}: the log's first segment does not record where the log starts",
                segments[0].path.display()
            )));
        }
        let (last_index, last_term) = match replay.entries.last() {
            Some(e) => (e.index, e.term),
            None => replay.start,
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            active,
            last_index,
            last_term,
            hard_state: replay.hard_state.clone().unwrap_or_default(),
            bytes_written: 0,
            frames_written: 0,
        };
        Ok((wal, replay))
    }

    /// Appends entries and/or a new hard state as one frame and makes it durable.
    pub fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<()> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let mut payload = Vec::with_capacity(entries.iter().map(|e| e.data.len() + 32).sum());
        for e in entries {
            let bytes = e
                .write_to_bytes()
                .map_err(|err| Error::Io(format!("encoding log entry: {err}")))?;
            push_record(&mut payload, RECORD_ENTRY, &bytes);
        }
        if let Some(hs) = hard_state {
            let bytes = hs
                .write_to_bytes()
                .map_err(|err| Error::Io(format!("encoding hard state: {err}")))?;
            push_record(&mut payload, RECORD_HARD_STATE, &bytes);
        }
        if !self.active.fits(payload.len()) {
            self.rotate()?;
        }
        self.bytes_written += self.active.append(&payload)?;
        self.frames_written += 1;
        if let Some(e) = entries.last() {
            self.last_index = e.index;
            self.last_term = e.term;
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Makes sure the next frame of `payload_bytes` fits without cutting a new segment, cutting
    /// (and preallocating) one now if needed: a full disk fails here, before anything is
    /// proposed, instead of in the middle of persisting what Raft already accepted.
    pub fn ensure_room(&mut self, payload_bytes: usize) -> Result<()> {
        if self.active.fits(payload_bytes) {
            return Ok(());
        }
        self.rotate()
    }

    /// Starts a new segment whose head records where the log stands, so older segments can
    /// later be deleted whole.
    fn rotate(&mut self) -> Result<()> {
        let seq = self.segments.last().map(|s| s.seq + 1).unwrap_or(1);
        let first_index = self.last_index + 1;
        let meta = SegmentMeta {
            seq,
            first_index,
            path: self.dir.join(segment_name(seq, first_index)),
        };
        let mut seg = Segment::create(&meta.path, self.segment_bytes)?;
        let mut payload = Vec::new();
        push_record(
            &mut payload,
            RECORD_START,
            &start_record(self.last_index, self.last_term),
        );
        let hs = self
            .hard_state
            .write_to_bytes()
            .map_err(|err| Error::Io(format!("encoding hard state: {err}")))?;
        push_record(&mut payload, RECORD_HARD_STATE, &hs);
        self.bytes_written += seg.append(&payload)?;
        sync_dir(&self.dir)?;
        self.active = seg;
        self.segments.push(meta);
        Ok(())
    }

    /// Replaces the log with an empty one starting after (index, term): a snapshot was
    /// installed, so every earlier entry is obsolete.
    pub fn restart_at(&mut self, index: u64, term: u64, hard_state: &HardState) -> Result<()> {
        self.last_index = index;
        self.last_term = term;
        self.hard_state = hard_state.clone();
        self.rotate()?;
        let mut payload = Vec::new();
        push_record(&mut payload, RECORD_RESET, &start_record(index, term));
        self.bytes_written += self.active.append(&payload)?;
        let keep = self.segments.len() - 1;
        for old in self.segments.drain(..keep) {
            fs::remove_file(&old.path)?;
        }
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Deletes segments holding only entries at or below `index` (already captured durably by
    /// the state machine), keeping the active segment.
    pub fn release_to(&mut self, index: u64) -> Result<usize> {
        let mut removable = 0;
        for pair in self.segments.windows(2) {
            // Everything in pair[0] is below pair[1].first_index.
            if pair[1].first_index <= index + 1 {
                removable += 1;
            } else {
                break;
            }
        }
        for old in self.segments.drain(..removable) {
            fs::remove_file(&old.path)?;
        }
        if removable > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removable)
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Bytes handed to the kernel so far (for write-volume accounting).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Frames (each one fdatasync) appended so far.
    pub fn frames_written(&self) -> u64 {
        self.frames_written
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

fn apply_frame(
    path: &Path,
    offset: u64,
    payload: &[u8],
    replay: &mut Replay,
    started: &mut bool,
) -> Result<()> {
    let mut rest = payload;
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err(pb_err(path, offset, "truncated record header"));
        }
        let kind = rest[0];
        let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let body = rest
            .get(5..5 + len)
            .ok_or_else(|| pb_err(path, offset, "record longer than its frame"))?;
        rest = &rest[5 + len..];
        match kind {
            RECORD_ENTRY => {
                let e = Entry::parse_from_bytes(body).map_err(|e| pb_err(path, offset, e))?;
                // A later entry at an index we hold replaces that index and everything after
                // it: a new leader overwrote an uncommitted tail.
                let first = replay.start.0 + 1;
                if e.index < first {
                    return Err(pb_err(
                        path,
                        offset,
                        format!("entry {} precedes the log start {}", e.index, first),
                    ));
                }
                let pos = (e.index - first) as usize;
                if pos > replay.entries.len() {
                    return Err(pb_err(
                        path,
                        offset,
                        format!("gap in the log before entry {}", e.index),
                    ));
                }
                replay.entries.truncate(pos);
                replay.entries.push(e);
            }
            RECORD_HARD_STATE => {
                let hs = HardState::parse_from_bytes(body).map_err(|e| pb_err(path, offset, e))?;
                replay.hard_state = Some(hs);
            }
            RECORD_START | RECORD_RESET => {
                let b: [u8; 16] = body
                    .try_into()
                    .map_err(|_| pb_err(path, offset, "bad start record"))?;
                let mut index = [0u8; 8];
                index.copy_from_slice(&b[..8]);
                let mut term = [0u8; 8];
                term.copy_from_slice(&b[8..]);
                let (index, term) = (u64::from_le_bytes(index), u64::from_le_bytes(term));
                if !*started || kind == RECORD_RESET {
                    replay.start = (index, term);
                    replay.entries.clear();
                    *started = true;
                }
            }
            other => return Err(pb_err(path, offset, format!("unknown record kind {other}"))),
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests;
