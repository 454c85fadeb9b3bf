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

/// Why this host's addresses could not be chosen.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("failed to list the addresses of interface {iface}: {source}")]
    Interfaces {
        iface: String,
        source: std::io::Error,
    },
    #[error("interface {0} has no IP address")]
    NoAddress(String),
    #[error("--node-ip {0}: give at most one address per IP family")]
    SameFamily(String),
}

/// The addresses of interface `name`, IPv4 first, then global IPv6 (no link-local).
pub fn interface_addresses(name: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
    use std::net::IpAddr;
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we own until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed; its name is
        // a NUL-terminated string and its address, when set, is a sockaddr of its family.
        let entry = unsafe { &*cur };
        let ifname = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        if ifname.to_bytes() == name.as_bytes() && !entry.ifa_addr.is_null() {
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                let sa = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
            } else if family == libc::AF_INET6 {
                let sa = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                let ip = std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr);
                if !ip.is_unicast_link_local() {
                    out.push(IpAddr::V6(ip));
                }
            }
        }
        cur = entry.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort_by_key(|ip| ip.is_ipv6());
    Ok(out)
}

/// The node's internal addresses, primary first: `--node-ip` as given, else the first
/// address of `iface`, else `fallback`, else the default route's source, else loopback.
pub fn node_addresses(
    node_ip: &[std::net::IpAddr],
    iface: Option<&str>,
    fallback: Option<std::net::IpAddr>,
) -> Result<Vec<std::net::IpAddr>, AddressError> {
    if !node_ip.is_empty() {
        if node_ip.len() > 2 || (node_ip.len() == 2 && node_ip[0].is_ipv4() == node_ip[1].is_ipv4())
        {
            let list: Vec<String> = node_ip.iter().map(ToString::to_string).collect();
            return Err(AddressError::SameFamily(list.join(",")));
        }
        return Ok(node_ip.to_vec());
    }
    if let Some(iface) = iface {
        let found = interface_addresses(iface).map_err(|source| AddressError::Interfaces {
            iface: iface.to_string(),
            source,
        })?;
        return found
            .first()
            .map(|ip| vec![*ip])
            .ok_or_else(|| AddressError::NoAddress(iface.to_string()));
    }
    let ip = fallback
        .or_else(|| primary_ipv4().and_then(|ip| ip.parse().ok()))
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    Ok(vec![ip])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_its_address_and_unknown_interfaces_none() {
        let lo = interface_addresses("lo").unwrap_or_default();
        assert_eq!(lo.first(), Some(&std::net::IpAddr::from([127, 0, 0, 1])));
        assert!(interface_addresses("no-such-if0")
            .unwrap_or_default()
            .is_empty());
        assert!(matches!(
            node_addresses(&[], Some("no-such-if0"), None),
            Err(AddressError::NoAddress(_))
        ));
    }

    #[test]
    fn node_ips_take_one_address_per_family() {
        let v4: std::net::IpAddr = [10, 0, 0, 2].into();
        let v6: std::net::IpAddr = "fd00::2".parse().unwrap_or(v4);
        assert_eq!(
            node_addresses(&[v4, v6], None, None).ok(),
            Some(vec![v4, v6])
        );
        assert!(matches!(
            node_addresses(&[v4, v4], None, None),
            Err(AddressError::SameFamily(_))
        ));
        assert_eq!(
            node_addresses(&[], Some("lo"), None).ok(),
            Some(vec![[127, 0, 0, 1].into()])
        );
    }
}
