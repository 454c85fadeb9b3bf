//! `krab etcd-snapshot save|ls`: takes a snapshot from the running server's datastore over
//! its etcd endpoint (with the client certificate in the data dir) and lists saved ones.
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use super::args::{EtcdSnapshotArgs, SnapshotAction};

fn snapshot_dir(data_dir: &std::path::Path, dir: &Option<PathBuf>) -> PathBuf {
    dir.clone()
        .unwrap_or_else(|| data_dir.join("server").join("db").join("snapshots"))
}

pub async fn run(args: EtcdSnapshotArgs) -> anyhow::Result<()> {
    match args.action {
        SnapshotAction::Save(a) => {
            let tls_dir = a.data_dir.join("server").join("tls").join("etcd");
            let read = |name: &str| {
                let p = tls_dir.join(name);
                std::fs::read(&p).with_context(|| format!("failed to read {}", p.display()))
            };
            let tls = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read("server-ca.crt")?))
                .identity(Identity::from_pem(read("client.crt")?, read("client.key")?));
            let endpoint = format!("https://{}", a.etcd_listen);
            let mut client = etcd_client::Client::connect(
                [endpoint.as_str()],
                Some(ConnectOptions::new().with_tls(tls)),
            )
            .await
            .with_context(|| format!("failed to connect to the datastore at {endpoint}"))?;
            let dir = snapshot_dir(&a.data_dir, &a.dir);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
            let node = crate::server::node_name(&None);
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let path = dir.join(format!("{}-{}-{}", a.name, node, stamp));
            let part = path.with_extension("part");
            let mut file = std::fs::File::create(&part)
                .with_context(|| format!("failed to create {}", part.display()))?;
            let mut stream = client
                .snapshot()
                .await
                .context("failed to start the snapshot")?;
            let mut total = 0usize;
            while let Some(chunk) = stream.message().await.context("snapshot stream failed")? {
                file.write_all(chunk.blob())
                    .with_context(|| format!("failed to write {}", part.display()))?;
                total += chunk.blob().len();
            }
            file.sync_all()?;
            drop(file);
            // Verify before publishing the file under its final name.
            let f = std::fs::File::open(&part)?;
            crate::store::snapshot::read(std::io::BufReader::new(f), &part.display().to_string())
                .context("the received snapshot failed verification")?;
            std::fs::rename(&part, &path)?;
            println!("Snapshot saved: {} ({total} bytes)", path.display());
            Ok(())
        }
        SnapshotAction::List(a) => {
            let dir = snapshot_dir(&a.data_dir, &a.dir);
            let mut rows = Vec::new();
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let meta = e.metadata()?;
                    if meta.is_file() {
                        rows.push((e.file_name().to_string_lossy().into_owned(), meta.len()));
                    }
                }
            }
            rows.sort();
            println!("{:<60} {:>12}", "Name", "Size");
            for (n, s) in rows {
                println!("{n:<60} {s:>12}");
            }
            Ok(())
        }
    }
}
