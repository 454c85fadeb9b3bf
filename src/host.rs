//! What this machine is, as every part of krab sees it: its node name and its addresses.

/// This host's IPv4 addresses (not loopback), in the kernel's order.
pub fn local_ipv4s() -> std::io::Result<Vec<String>> {
    // /proc/net/fib_trie lists local addresses without any extra dependency.
    let text = std::fs::read_to_string("/proc/net/fib_trie")?;
    let mut out = Vec::new();
    let mut last_ip: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(ip) = t.strip_prefix("|-- ") {
            last_ip = Some(ip.to_string());
        } else if t.contains("/32 host LOCAL") {
            if let Some(ip) = last_ip.take() {
                if !ip.starts_with("127.") && !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    Ok(out)
}

pub fn node_name(flag: &Option<String>) -> String {
    flag.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_lowercase())
            .unwrap_or_else(|_| "krab".into())
    })
}
