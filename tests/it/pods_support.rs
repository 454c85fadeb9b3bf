//! What tests that run real pods need: one pod network at a time on this machine (the `cni0`
//! bridge and 10.42.0.0/24 are the same for every test server), an nftables guard so that
//! nothing addressed to the cluster ranges leaves through the uplink, and pods of earlier
//! tests swept away.
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::support::run_bounded;

static POD_NETWORK: Mutex<()> = Mutex::new(());

/// Held while a test runs pods: the machine's pod network is this test's alone, and the
/// guard table drops cluster-range traffic on the uplink until dropped.
pub struct PodNetwork {
    table: Option<String>,
    _exclusive: MutexGuard<'static, ()>,
}

fn uplink() -> Option<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["-o", "route", "show", "default"]);
    let out = run_bounded(cmd, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "dev" {
            return words.next().map(str::to_string);
        }
    }
    None
}

fn nft(script: &str) -> bool {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft (nftables) is needed by the pod tests");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("nft stdin");
        stdin.write_all(script.as_bytes()).expect("write to nft");
    }
    child.wait().map(|s| s.success()).unwrap_or(false)
}

/// Every pid in a cgroup directory tree.
fn cgroup_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            cgroup_pids(&entry.path(), out);
        }
    }
}

/// Removes what earlier test servers left running: krab leaves pods running when it stops
/// (by design), and a later test on the same bridge would meet their IPs. Kills every
/// process in the kubepods cgroups and the shims of test data dirs, deletes the pods'
/// network namespaces and unmounts test data dirs' container mounts.
fn sweep() {
    let tmp = std::env::temp_dir().display().to_string();
    let mut pids = Vec::new();
    for controller in ["pids", "unified", "systemd"] {
        cgroup_pids(
            &Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("kubepods"),
            &mut pids,
        );
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("/usr/bin/containerd-shim") && cmd.contains(&tmp) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        // SAFETY: signalling processes that belong to earlier tests' pods.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    for entry in std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("cni-") {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "delete", &name]);
            run_bounded(cmd, Duration::from_secs(5));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&tmp) && p.contains("/agent/"))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let mut cmd = Command::new("umount");
        cmd.args(["-l", p]);
        run_bounded(cmd, Duration::from_secs(5));
    }
}

impl PodNetwork {
    pub fn acquire() -> PodNetwork {
        let exclusive = POD_NETWORK.lock().unwrap_or_else(|e| e.into_inner());
        sweep();
        let table = uplink().map(|dev| {
            let name = format!("krab_test_guard_{}", std::process::id());
            // The dual-stack tests' IPv6 ranges are guarded the same way.
            let rule = format!(
                "oifname \"{dev}\" ip daddr {{ 10.42.0.0/16, 10.43.0.0/16 }} counter drop; oifname \"{dev}\" ip6 daddr {{ fd00:42::/48, fd00:43::/48 }} counter drop;"
            );
            let script = format!(
                "table inet {name} {{\n chain guard_out {{ type filter hook output priority -10; policy accept; {rule} }}\n chain guard_fwd {{ type filter hook forward priority -10; policy accept; {rule} }}\n}}\n"
            );
            assert!(nft(&script), "installing the nftables guard failed");
            name
        });
        PodNetwork {
            table,
            _exclusive: exclusive,
        }
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        sweep();
        if let Some(t) = self.table.take() {
            nft(&format!("delete table inet {t}\n"));
        }
    }
}

/// The shell line a busybox pod GETs / with: nc speaks the HTTP (busybox-static's wget
/// crashes in a container: static glibc without NSS files).
pub fn nc_get_script(host: &str, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}")
}

/// An HTTP/1 exchange's outcome: the body when it worked, else everything that was said.
pub fn http_body(ok: bool, out: String) -> (bool, String) {
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if ok && head.starts_with("HTTP/1.") => (true, body.to_string()),
        _ => (false, out),
    }
}
