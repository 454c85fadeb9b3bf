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

/// This host's main IPv4 address: the source address of its default route (found by
/// routing a UDP socket, which sends nothing), or else its first non-loopback address.
pub fn primary_ipv4() -> Option<String> {
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("1.1.1.1:9")?;
            s.local_addr()
        })
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        .map(|ip| ip.to_string());
    let routed = routed.filter(|ip| local_ipv4s().map(|l| l.contains(ip)).unwrap_or(false));
    routed.or_else(|| local_ipv4s().ok().and_then(|l| l.into_iter().next()))
}

pub fn node_name(flag: &Option<String>) -> String {
    flag.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_lowercase())
            .unwrap_or_else(|_| "krab".into())
    })
}
