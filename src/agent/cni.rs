//! The pod network on one node: a CNI conflist for containerd (bridge `cni0` over the node's
//! podCIDRs with host-local IPAM, an address of each family on a dual-stack node, portmap
//! for hostPorts, bandwidth), written once the node has a podCIDR. containerd's CRI picks
//! the file up by itself.
use std::path::{Path, PathBuf};

use serde_json::json;

pub const CONFLIST: &str = "10-krab.conflist";

/// How the bridge is set up beyond its range.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The pods' MTU (None: the bridge plugin's default).
    pub mtu: Option<u32>,
    /// The bridge plugin masquerades traffic leaving the node's range.
    pub bridge_masquerade: bool,
}

/// The conflist for the node's pod CIDRs (host-local keeps its leases under `ipam_dir`).
pub fn conflist(pod_cidrs: &[String], ipam_dir: &Path, options: &Options) -> serde_json::Value {
    let ranges: Vec<serde_json::Value> = pod_cidrs.iter().map(|c| json!([{"subnet": c}])).collect();
    let routes: Vec<serde_json::Value> = pod_cidrs
        .iter()
        .map(|c| json!({"dst": if c.contains(':') { "::/0" } else { "0.0.0.0/0" }}))
        .collect();
    let mut v = json!({
        "cniVersion": "1.0.0",
        "name": "krab",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": options.bridge_masquerade,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": ranges,
                    "routes": routes,
                    "dataDir": ipam_dir.display().to_string(),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    });
    if let Some(mtu) = options.mtu {
        v["plugins"][0]["mtu"] = json!(mtu);
    }
    v
}

/// Writes the conflist when it differs; true when it was (re)written.
pub fn write(
    conf_dir: &Path,
    pod_cidrs: &[String],
    ipam_dir: &Path,
    options: &Options,
) -> std::io::Result<bool> {
    std::fs::create_dir_all(conf_dir)?;
    let path: PathBuf = conf_dir.join(CONFLIST);
    let text =
        serde_json::to_string_pretty(&conflist(pod_cidrs, ipam_dir, options)).unwrap_or_default();
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(false);
    }
    let tmp = conf_dir.join(format!(".{CONFLIST}.tmp"));
    std::fs::write(&tmp, &text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_uses_the_node_range() {
        let dir = tempfile::tempdir().unwrap();
        let o = Options {
            mtu: Some(1450),
            bridge_masquerade: false,
        };
        let one = ["10.42.3.0/24".to_string()];
        assert!(write(dir.path(), &one, Path::new("/x"), &o).unwrap());
        assert!(!write(dir.path(), &one, Path::new("/x"), &o).unwrap());
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFLIST)).unwrap())
                .unwrap();
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.3.0/24"
        );
        assert_eq!(v["plugins"][0]["mtu"], 1450);
        assert_eq!(v["plugins"][0]["ipMasq"], false);
        // Dual-stack: a range and a default route per family.
        let two = ["10.42.3.0/24".to_string(), "fd00:42:0:3::/64".to_string()];
        let v = conflist(&two, Path::new("/x"), &o);
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][1][0]["subnet"],
            "fd00:42:0:3::/64"
        );
        assert_eq!(v["plugins"][0]["ipam"]["routes"][1]["dst"], "::/0");
    }
}
