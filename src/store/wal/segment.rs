//! One preallocated log segment file: frame encoding, checksums, durable appends and the
//! torn-tail repair done when the last segment is opened.
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::store::error::{Error, Result};

const HEADER: usize = 8;
const ALIGN: usize = 8;
/// A frame larger than this is not a frame but garbage (requests are limited far below it).
const MAX_FRAME: usize = 256 << 20;

pub struct Segment {
    file: File,
    path: PathBuf,
    /// Where the next frame goes.
    offset: u64,
    capacity: u64,
    frames: usize,
}

pub struct Frame {
    pub offset: u64,
    pub payload: Vec<u8>,
}

fn frame_len(payload: usize) -> usize {
    (HEADER + payload).div_ceil(ALIGN) * ALIGN
}

/// Decodes the frame at `at`: `Ok(None)` at the end marker, `Err(())` when damaged.
fn frame_at(data: &[u8], at: usize) -> Result<Option<(usize, &[u8])>, ()> {
    let Some(head) = data.get(at..at + HEADER) else {
        return Ok(None); // end of file
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 && crc == 0 {
        return Ok(None);
    }
    if len == 0 || len > MAX_FRAME {
        return Err(());
    }
    let payload = data.get(at + HEADER..at + HEADER + len).ok_or(())?;
    if crc32fast::hash(payload) != crc {
        return Err(());
    }
    Ok(Some((frame_len(len), payload)))
}

impl Segment {
    /// Creates a segment of `capacity` bytes, preallocated so appends do not run out of space
    /// half-way (a full disk fails here, before anything is proposed into it).
    pub fn create(path: &Path, capacity: u64) -> Result<Segment> {
        let tmp = path.with_extension("tmp");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        preallocate(&file, capacity)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(Segment {
            file,
            path: path.to_path_buf(),
            offset: 0,
            capacity,
            frames: 0,
        })
    }

    pub fn open(path: &Path) -> Result<Segment> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let capacity = file.metadata()?.len();
        Ok(Segment {
            file,
            path: path.to_path_buf(),
            offset: 0,
            capacity,
            frames: 0,
        })
    }

    /// Reads every frame. In the last segment a damaged final frame is a torn write: it is
    /// zeroed and the segment continues from there. Anything else damaged is corruption.
    pub fn read_frames(&mut self, last: bool) -> Result<Vec<Frame>> {
        let mut data = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut data)?;
        let mut frames = Vec::new();
        let mut at = 0usize;
        loop {
            match frame_at(&data, at) {
                Ok(None) => break,
                Ok(Some((len, payload))) => {
                    frames.push(Frame {
                        offset: at as u64,
                        payload: payload.to_vec(),
                    });
                    at += len;
                }
                Err(()) => {
                    let later = (at + ALIGN..data.len())
                        .step_by(ALIGN)
                        .find(|&o| matches!(frame_at(&data, o), Ok(Some(_))));
                    if !last || later.is_some() {
                        return Err(Error::Corrupt(format!(
                            "{}: damaged log frame at offset {at}{}; refusing to start \
                             (acknowledged writes may be affected)",
                            self.path.display(),
                            match later {
                                Some(o) => format!(" followed by a valid frame at {o}"),
                                None => " in a segment that is not the last".into(),
                            }
                        )));
                    }
                    tracing::warn!(
                        path = %self.path.display(),
                        offset = at,
                        "truncating a torn write at the end of the log (it was never acknowledged)"
                    );
                    self.zero_from(&data, at)?;
                    break;
                }
            }
        }
        self.offset = at as u64;
        self.frames = frames.len();
        Ok(frames)
    }

    fn zero_from(&self, data: &[u8], at: usize) -> Result<()> {
        const CHUNK: usize = 64 << 10;
        let zeros = vec![0u8; CHUNK];
        let mut pos = at;
        while pos < data.len() {
            let end = (pos + CHUNK).min(data.len());
            if data[pos..end].iter().any(|b| *b != 0) {
                self.file.write_all_at(&zeros[..end - pos], pos as u64)?;
            }
            pos = end;
        }
        self.file.sync_data()?;
        Ok(())
    }

    /// Whether a frame with this payload fits; a fresh segment takes any frame (it grows).
    pub fn fits(&self, payload: usize) -> bool {
        self.frames <= 1 || self.offset + frame_len(payload) as u64 <= self.capacity
    }

    /// Writes one frame and fdatasyncs; returns the bytes written.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64> {
        if payload.len() > MAX_FRAME {
            return Err(Error::RequestTooLarge {
                size: payload.len(),
                limit: MAX_FRAME,
            });
        }
        let len = frame_len(payload.len());
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        buf.extend_from_slice(payload);
        buf.resize(len, 0);
        self.file.write_all_at(&buf, self.offset)?;
        self.file.sync_data()?;
        self.offset += len as u64;
        self.frames += 1;
        Ok(len as u64)
    }
}

fn preallocate(file: &File, len: u64) -> Result<()> {
    // SAFETY: fallocate on an fd we own, with no memory passed in.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            file.set_len(len)?;
            Ok(())
        }
        _ => Err(err.into()),
    }
}
