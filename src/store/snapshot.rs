//! The snapshot format shared by Raft catch-up, `krab etcd-snapshot save` and restores:
//! the state machine's backend entries, framed, and closed by a SHA-256 of everything before
//! it (as etcd closes its snapshots with one), so a corrupt or foreign file is refused.
//! The body is zero-padded to 512 bytes so etcdctl recognises the checksum too.
use std::io::{Read, Write};

use sha2::{Digest, Sha256};

use super::error::{Error, Result};

const MAGIC: &[u8; 8] = b"KRABSNAP";
const VERSION: u32 = 1;
const END: u32 = u32::MAX;

/// Writes a snapshot of `entries` to `out`, returning the bytes written.
pub fn write<W: Write>(
    out: &mut W,
    entries: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>,
) -> Result<u64> {
    struct Hashed<'a, W> {
        out: &'a mut W,
        hasher: Sha256,
        written: u64,
    }
    impl<W: Write> Hashed<'_, W> {
        fn put(&mut self, bytes: &[u8]) -> Result<()> {
            self.hasher.update(bytes);
            self.out.write_all(bytes)?;
            self.written += bytes.len() as u64;
            Ok(())
        }
    }
    let mut h = Hashed {
        out,
        hasher: Sha256::new(),
        written: 0,
    };
    h.put(MAGIC)?;
    h.put(&VERSION.to_le_bytes())?;
    for e in entries {
        let (k, v) = e?;
        h.put(&(k.len() as u32).to_le_bytes())?;
        h.put(&k)?;
        h.put(&(v.len() as u32).to_le_bytes())?;
        h.put(&v)?;
    }
    h.put(&END.to_le_bytes())?;
    // etcdctl finds the trailing checksum only when the body is a whole number of 512-byte
    // pages (etcd's snapshots are bbolt files), so pad to one.
    let pad = (512 - (h.written % 512) as usize) % 512;
    h.put(&vec![0u8; pad])?;
    let digest = h.hasher.finalize();
    h.out.write_all(&digest)?;
    Ok(h.written + digest.len() as u64)
}

/// Reads and verifies a whole snapshot; `what` names the source in errors.
pub fn read<R: Read>(mut input: R, what: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut data = Vec::new();
    input.read_to_end(&mut data)?;
    let bad = |why: &str| Error::Corrupt(format!("{what}: not a valid krab snapshot: {why}"));
    if data.len() < MAGIC.len() + 4 + 4 + 32 || &data[..8] != MAGIC {
        return Err(bad(
            "missing the KRABSNAP header (is it an etcd or foreign file?)",
        ));
    }
    let (body, digest) = data.split_at(data.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(bad("checksum mismatch (the file is truncated or damaged)"));
    }
    let version = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
    if version != VERSION {
        return Err(bad(&format!("unsupported version {version}")));
    }
    let mut rest = &body[12..];
    let take_u32 = |rest: &mut &[u8]| -> Result<u32> {
        let (n, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("truncated entry"))?;
        *rest = tail;
        Ok(u32::from_le_bytes(*n))
    };
    let mut out = Vec::new();
    loop {
        let klen = take_u32(&mut rest)?;
        if klen == END {
            break;
        }
        let k = rest
            .get(..klen as usize)
            .ok_or_else(|| bad("truncated key"))?
            .to_vec();
        rest = &rest[klen as usize..];
        let vlen = take_u32(&mut rest)? as usize;
        let v = rest
            .get(..vlen)
            .ok_or_else(|| bad("truncated value"))?
            .to_vec();
        rest = &rest[vlen..];
        out.push((k, v));
    }
    if rest.iter().any(|b| *b != 0) {
        return Err(bad("trailing bytes after the end marker"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_refused() {
        let entries = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), vec![7; 300]),
        ];
        let mut buf = Vec::new();
        write(&mut buf, entries.clone().into_iter().map(Ok)).unwrap();
        assert_eq!(read(&buf[..], "snap").unwrap(), entries);
        let mut damaged = buf.clone();
        damaged[20] ^= 1;
        assert!(read(&damaged[..], "snap")
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        assert!(read(
            &b"hello world, this is not a snapshot at all......"[..],
            "f"
        )
        .unwrap_err()
        .to_string()
        .contains("header"));
        assert!(read(&buf[..buf.len() - 5], "snap").is_err());
    }
}
