//! A busybox image built from Debian's busybox-static (`/bin/busybox` and a link per applet)
//! and written as an OCI image layout archive named docker.io/library/busybox:1.35: what
//! tests and benchmarks run as pods, with no registry anywhere. Shared by the integration
//! tests and the `bench_pods` example.
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// The image name pods use; `IfNotPresent` by default (not `:latest`), so never pulled.
pub const BUSYBOX: &str = "busybox:1.35";

fn blob(out: &mut tar::Builder<std::fs::File>, bytes: &[u8]) -> (String, usize) {
    let hex = format!("{:x}", Sha256::digest(bytes));
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    out.append_data(&mut header, format!("blobs/sha256/{hex}"), bytes)
        .expect("write blob");
    (format!("sha256:{hex}"), bytes.len())
}

/// The root filesystem: /bin/busybox with a link per applet, and the usual directories.
fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    // `--list` prints and exits at once.
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["bin", "etc", "tmp", "var", "var/www", "proc", "sys", "dev"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        h.set_size(0);
        h.set_cksum();
        layer.append_data(&mut h, dir, &[][..]).expect("dir");
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(busybox.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    layer
        .append_data(&mut h, "bin/busybox", &busybox[..])
        .expect("busybox");
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        layer
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("link");
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(passwd.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    layer
        .append_data(&mut h, "etc/passwd", &passwd[..])
        .expect("passwd");
    layer.into_inner().expect("layer")
}

/// Writes `busybox.tar` (OCI image layout, named docker.io/library/busybox:1.35) into
/// `images_dir`, where the agent imports archives from at start.
pub fn write_busybox_image(images_dir: &Path) {
    write_image(
        images_dir,
        "busybox.tar",
        "docker.io/library/busybox:1.35",
        "IMAGE=busybox",
    );
}

/// Writes `file` into `dir`: the busybox image named `name` (OCI layout), whose config
/// carries `env`, so images of different `env` are different images.
#[allow(dead_code)]
pub fn write_image(dir: &Path, file: &str, name: &str, env: &str) {
    let images_dir = dir;
    std::fs::create_dir_all(images_dir).unwrap();
    let file = std::fs::File::create(images_dir.join(file)).unwrap();
    let mut out = tar::Builder::new(file);
    let layer = busybox_layer();
    let diff_id = format!("sha256:{:x}", Sha256::digest(&layer));
    let (layer_digest, layer_size) = blob(&mut out, &layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin", env]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (config_digest, config_size) = blob(&mut out, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = blob(&mut out, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap_or("latest")}}],
    });
    for (name, body) in [
        (
            "oci-layout",
            r#"{"imageLayoutVersion":"1.0.0"}"#.to_string(),
        ),
        ("index.json", index.to_string()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.append_data(&mut h, name, body.as_bytes()).unwrap();
    }
    out.finish().unwrap();
}
