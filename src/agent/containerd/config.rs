//! The containerd configuration the agent generates: CRI on, the agent's own pause image as
//! the sandbox image, the host's CNI plugins with the agent's conflist directory, and registry
//! mirrors and credentials from `/etc/krab/registries.yaml` (k3s's format).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where everything containerd owns lives for one agent.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<data-dir>/agent/containerd`: containerd's root (content, snapshots, metadata).
    pub root: PathBuf,
    /// Runtime state: `/run/krab/containerd` for the default data dir, else under the data dir
    /// (so agents with different data dirs, as in tests, never share a socket).
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub log: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        let agent = data_dir.join("agent");
        let state = if data_dir == Path::new("/var/lib/krab") {
            PathBuf::from("/run/krab/containerd")
        } else {
            agent.join("run").join("containerd")
        };
        Layout {
            root: agent.join("containerd"),
            socket: state.join("containerd.sock"),
            state,
            config: agent.join("etc").join("containerd").join("config.toml"),
            cni_conf_dir: agent.join("etc").join("cni").join("net.d"),
            cni_bin_dir: cni_bin_dir(),
            log: agent.join("containerd").join("containerd.log"),
        }
    }
}

/// The first directory holding the host's CNI plugins (Debian installs them in /usr/lib/cni).
pub fn cni_bin_dir() -> PathBuf {
    ["/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("bridge").exists())
        .unwrap_or_else(|| PathBuf::from("/usr/lib/cni"))
}

/// `/etc/krab/registries.yaml`, as k3s reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    #[serde(default)]
    pub endpoint: Vec<String>,
    #[serde(default)]
    pub rewrite: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub auth: Option<RegistryAuth>,
    #[serde(default)]
    pub tls: Option<RegistryTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: Option<String>,
    pub password: Option<String>,
    pub auth: Option<String>,
    pub identitytoken: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryTls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub ca_file: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
}

impl Registries {
    /// Reads the file; a missing file means no mirrors, a malformed one is an error naming it.
    pub fn load(path: &Path) -> Result<Registries, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registries::default()),
            Err(source) => {
                return Err(Error::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        if text.trim().is_empty() {
            return Ok(Registries::default());
        }
        serde_yaml::from_str(&text).map_err(|source| Error::Parse {
            path: path.display().to_string(),
            source,
        })
    }
}

/// Whether this process holds CAP_SYS_RESOURCE (capability 24) in its effective set.
fn has_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_none_or(|caps| caps & (1 << 24) != 0)
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The containerd 1.6 (config version 2) file for this agent.
pub fn render(
    layout: &Layout,
    sandbox_image: &str,
    stream_port: u16,
    registries: &Registries,
) -> String {
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    let mut t = String::new();
    let _ = writeln!(t, "# Generated by krab; edits are overwritten at start.");
    let _ = writeln!(t, "version = 2");
    let _ = writeln!(t, "root = {}", quote(&layout.root.display().to_string()));
    let _ = writeln!(t, "state = {}", quote(&layout.state.display().to_string()));
    let _ = writeln!(
        t,
        "\n[grpc]\n  address = {}",
        quote(&layout.socket.display().to_string())
    );
    let _ = writeln!(
        t,
        "\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}",
        quote(&layout.root.join("opt").display().to_string())
    );
    let _ = writeln!(t, "\n[{cri}]");
    let _ = writeln!(t, "  stream_server_address = \"127.0.0.1\"");
    let _ = writeln!(t, "  stream_server_port = \"{stream_port}\"");
    let _ = writeln!(t, "  enable_selinux = false");
    // Without CAP_SYS_RESOURCE no process may lower its OOM score, and runc fails every
    // sandbox (the CRI asks for -998): keep scores at or above our own instead, as rootless
    // setups do.
    if !has_sys_resource() {
        let _ = writeln!(t, "  restrict_oom_score_adj = true");
    }
    let _ = writeln!(t, "  sandbox_image = {}", quote(sandbox_image));
    let _ = writeln!(
        t,
        "\n[{cri}.containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\""
    );
    let _ = writeln!(
        t,
        "\n[{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\""
    );
    let _ = writeln!(
        t,
        "\n[{cri}.containerd.runtimes.runc.options]\n  SystemdCgroup = false"
    );
    let _ = writeln!(
        t,
        "\n[{cri}.cni]\n  bin_dir = {}\n  conf_dir = {}",
        quote(&layout.cni_bin_dir.display().to_string()),
        quote(&layout.cni_conf_dir.display().to_string())
    );
    for (host, mirror) in &registries.mirrors {
        let _ = writeln!(t, "\n[{cri}.registry.mirrors.{}]", quote(host));
        let endpoints: Vec<String> = mirror.endpoint.iter().map(|e| quote(e)).collect();
        let _ = writeln!(t, "  endpoint = [{}]", endpoints.join(", "));
        if !mirror.rewrite.is_empty() {
            let _ = writeln!(t, "\n[{cri}.registry.mirrors.{}.rewrite]", quote(host));
            for (from, to) in &mirror.rewrite {
                let _ = writeln!(t, "  {} = {}", quote(from), quote(to));
            }
        }
    }
    for (host, config) in &registries.configs {
        if let Some(auth) = &config.auth {
            let _ = writeln!(t, "\n[{cri}.registry.configs.{}.auth]", quote(host));
            for (k, v) in [
                ("username", &auth.username),
                ("password", &auth.password),
                ("auth", &auth.auth),
                ("identitytoken", &auth.identitytoken),
            ] {
                if let Some(v) = v {
                    let _ = writeln!(t, "  {k} = {}", quote(v));
                }
            }
        }
        if let Some(tls) = &config.tls {
            let _ = writeln!(t, "\n[{cri}.registry.configs.{}.tls]", quote(host));
            for (k, v) in [
                ("cert_file", &tls.cert_file),
                ("key_file", &tls.key_file),
                ("ca_file", &tls.ca_file),
            ] {
                if let Some(v) = v {
                    let _ = writeln!(t, "  {k} = {}", quote(v));
                }
            }
            let _ = writeln!(t, "  insecure_skip_verify = {}", tls.insecure_skip_verify);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_render_as_cri_mirrors_and_configs() {
        let reg: Registries = serde_yaml::from_str(
            "mirrors:\n  docker.io:\n    endpoint: [\"https://mirror.local:5000\"]\nconfigs:\n  mirror.local:5000:\n    auth: {username: u, password: \"p\\\"w\"}\n    tls: {insecure_skip_verify: true}\n",
        )
        .unwrap();
        let layout = Layout::new(Path::new("/tmp/x"));
        let text = render(&layout, "krab.local/pause:1", 10010, &reg);
        assert!(text.contains("[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.local:5000\"]"));
        assert!(text.contains("password = \"p\\\"w\""));
        assert!(text.contains("insecure_skip_verify = true"));
        assert!(text.contains("sandbox_image = \"krab.local/pause:1\""));
        assert!(text.contains("address = \"/tmp/x/agent/run/containerd/containerd.sock\""));
    }

    #[test]
    fn a_malformed_registries_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("registries.yaml");
        std::fs::write(&p, "mirrors: [1, 2]\n").unwrap();
        let err = Registries::load(&p).unwrap_err().to_string();
        assert!(err.contains("registries.yaml"), "{err}");
        assert!(Registries::load(&dir.path().join("none.yaml")).is_ok());
    }
}
