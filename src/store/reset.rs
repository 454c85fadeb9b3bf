//! `--cluster-reset` (and `--cluster-reset-restore-path`): turn a member's data into a
//! one-member cluster, optionally from a snapshot file, as k3s does. The old data directory
//! is moved aside, never deleted.
use std::path::Path;

use protobuf::Message as _;
use raft::prelude::{ConfState, HardState};

use super::mvcc::{Applied, Membership, Mvcc};
use super::types::Member;
use super::{random_id, snapshot, Error, Identity, Result};

fn conf_state_of(id: u64) -> Vec<u8> {
    let cs = ConfState {
        voters: vec![id],
        ..Default::default()
    };
    cs.write_to_bytes().unwrap_or_default()
}

/// Resets `db_dir` (`<data-dir>/server/db`) in place; with `restore`, replaces its data with
/// the snapshot's after checking the snapshot whole.
pub fn reset(db_dir: &Path, name: &str, restore: Option<&Path>) -> Result<()> {
    let id_path = db_dir.join("member.json");
    match restore {
        Some(file) => {
            let f = std::fs::File::open(file)
                .map_err(|e| Error::Io(format!("{}: {e}", file.display())))?;
            let entries = snapshot::read(std::io::BufReader::new(f), &file.display().to_string())?;
            if db_dir.exists() {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = db_dir.with_file_name(format!("db-old-{stamp}"));
                std::fs::rename(db_dir, &aside)?;
                tracing::info!(old = %aside.display(), "moved the previous datastore aside");
            }
            std::fs::create_dir_all(db_dir)?;
            let identity = Identity {
                member_id: random_id(),
                cluster_id: random_id(),
                name: name.to_string(),
            };
            let mvcc = Mvcc::open(&db_dir.join("state"), 32 << 20)?;
            let applied = Applied { index: 1, term: 1 };
            mvcc.replace(entries.into_iter().map(Ok), applied)?;
            let me = Member {
                id: identity.member_id,
                name: name.to_string(),
                ..Default::default()
            };
            mvcc.apply_membership(
                applied,
                Some(Membership {
                    members: vec![me],
                    conf_state: conf_state_of(identity.member_id),
                }),
            )?;
            mvcc.checkpoint(&db_dir.join("state"))?;
            let (mut wal, _) = super::wal::Wal::open(&db_dir.join("wal"), 64 << 20)?;
            let hs = HardState {
                term: 1,
                commit: 1,
                ..Default::default()
            };
            wal.restart_at(1, 1, &hs)?;
            let bytes =
                serde_json::to_vec_pretty(&identity).map_err(|e| Error::Io(e.to_string()))?;
            std::fs::write(&id_path, bytes)?;
            tracing::info!(
                rev = mvcc.current_revision(),
                "restored the datastore from a snapshot"
            );
            Ok(())
        }
        None => {
            let bytes = std::fs::read(&id_path)
                .map_err(|e| Error::Io(format!("{}: {e} (nothing to reset)", id_path.display())))?;
            let identity: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", id_path.display())))?;
            let state = db_dir.join("state");
            let mvcc = Mvcc::open(&state, 32 << 20)?;
            let mut membership = mvcc.membership();
            membership.members.retain(|m| m.id == identity.member_id);
            if membership.members.is_empty() {
                membership.members.push(Member {
                    id: identity.member_id,
                    name: name.to_string(),
                    ..Default::default()
                });
            }
            membership.conf_state = conf_state_of(identity.member_id);
            mvcc.apply_membership(mvcc.applied(), Some(membership))?;
            mvcc.checkpoint(&state)?;
            tracing::info!("reset the datastore to a one-member cluster");
            Ok(())
        }
    }
}
