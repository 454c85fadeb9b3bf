//! Write-ahead log tests: replay, overwrite, rotation, torn tails and corruption.
use std::os::unix::fs::FileExt;

use raft::eraftpb::{Entry, HardState};

use super::*;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8; 100].into(),
        ..Default::default()
    }
}

fn hs(term: u64, commit: u64) -> HardState {
    HardState {
        term,
        commit,
        ..Default::default()
    }
}

fn newest_segment(dir: &Path) -> PathBuf {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    names.sort();
    names.pop().unwrap()
}

#[test]
fn appended_entries_and_hard_state_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, replay) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert!(replay.entries.is_empty());
        wal.append(&[entry(1, 1), entry(2, 1)], Some(&hs(1, 2)))
            .unwrap();
        wal.append(&[entry(3, 1)], None).unwrap();
    }
    let (wal, replay) = Wal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        replay.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(replay.hard_state.unwrap().commit, 2);
    assert_eq!(wal.last_index(), 3);
}

#[test]
fn a_later_entry_overwrites_the_tail_it_conflicts_with() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        wal.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
            .unwrap();
        wal.append(&[entry(2, 2)], None).unwrap();
    }
    let (_, replay) = Wal::open(dir.path(), 1 << 20).unwrap();
    let got: Vec<_> = replay.entries.iter().map(|e| (e.index, e.term)).collect();
    assert_eq!(got, vec![(1, 1), (2, 2)]);
}

#[test]
fn segments_rotate_and_old_ones_are_released() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), 4096).unwrap();
        for i in 1..=100 {
            wal.append(&[entry(i, 1)], Some(&hs(1, i))).unwrap();
        }
        assert!(wal.segment_count() > 3);
        wal.release_to(60).unwrap();
    }
    let (_, replay) = Wal::open(dir.path(), 4096).unwrap();
    let first = replay.entries.first().unwrap().index;
    assert!(first <= 61 && first > 1, "first entry {first}");
    assert_eq!(replay.start.0 + 1, first);
    assert_eq!(replay.entries.last().unwrap().index, 100);
    assert_eq!(replay.hard_state.unwrap().commit, 100);
}

#[test]
fn a_torn_last_frame_is_truncated_and_earlier_frames_survive() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        wal.append(&[entry(1, 1)], None).unwrap();
        wal.append(&[entry(2, 1)], None).unwrap();
    }
    // Damage the middle of the last frame, as a power cut during its write would.
    let path = newest_segment(dir.path());
    let data = fs::read(&path).unwrap();
    let end = data.iter().rposition(|b| *b != 0).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&[0xAB; 16], (end - 40) as u64)
        .unwrap();
    let (mut wal, replay) = Wal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        replay.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![1]
    );
    // The log goes on from the repaired point.
    wal.append(&[entry(2, 2)], None).unwrap();
    drop(wal);
    let (_, replay) = Wal::open(dir.path(), 1 << 20).unwrap();
    let got: Vec<_> = replay.entries.iter().map(|e| (e.index, e.term)).collect();
    assert_eq!(got, vec![(1, 1), (2, 2)]);
}

#[test]
fn damage_before_a_valid_frame_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        for i in 1..=3 {
            wal.append(&[entry(i, 1)], None).unwrap();
        }
    }
    let path = newest_segment(dir.path());
    // Flip a byte inside the second frame's payload (the first frame is the segment head).
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0xFF], 60).unwrap();
    let err = Wal::open(dir.path(), 1 << 20).err().expect("must refuse");
    let msg = err.to_string();
    assert!(msg.contains("damaged log frame"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn restart_at_discards_the_old_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        wal.append(&[entry(1, 1), entry(2, 1)], None).unwrap();
        wal.restart_at(50, 3, &hs(3, 50)).unwrap();
        wal.append(&[entry(51, 3)], None).unwrap();
    }
    let (_, replay) = Wal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(replay.start, (50, 3));
    assert_eq!(
        replay.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![51]
    );
    assert_eq!(replay.hard_state.unwrap().commit, 50);
}
