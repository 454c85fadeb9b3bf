//! A cluster range as flags give it: one CIDR, or an IPv4 and an IPv6 CIDR for a dual-stack
//! cluster (`10.42.0.0/16,fd00:42::/56`), the primary family first.
use std::fmt;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// One range per IP family: IPv4 (the primary) and, on a dual-stack cluster, IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidrs {
    v4: Ipv4Net,
    v6: Option<Ipv6Net>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrsError {
    #[error("{0:?} is not a CIDR (such as 10.42.0.0/16 or fd00:42::/56)")]
    NotACidr(String),
    #[error("give one CIDR per IP family, at most two")]
    SameFamily,
    #[error("the first CIDR must be IPv4 (IPv6-primary clusters are not supported yet)")]
    Ipv6First,
}

impl Cidrs {
    pub fn new(v4: Ipv4Net, v6: Option<Ipv6Net>) -> Cidrs {
        Cidrs { v4, v6 }
    }

    /// Every range, the primary first.
    pub fn all(&self) -> Vec<IpNet> {
        std::iter::once(IpNet::V4(self.v4))
            .chain(self.v6.map(IpNet::V6))
            .collect()
    }

    pub fn ipv4(&self) -> Ipv4Net {
        self.v4
    }

    pub fn ipv6(&self) -> Option<Ipv6Net> {
        self.v6
    }

    pub fn dual_stack(&self) -> bool {
        self.v6.is_some()
    }
}

impl FromStr for Cidrs {
    type Err = CidrsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nets = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|_| CidrsError::NotACidr(p.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        match nets.as_slice() {
            [] => Err(CidrsError::NotACidr(s.to_string())),
            [a, b] if a.network().is_ipv4() == b.network().is_ipv4() => Err(CidrsError::SameFamily),
            [_, _, _, ..] => Err(CidrsError::SameFamily),
            [IpNet::V4(v4)] => Ok(Cidrs { v4: *v4, v6: None }),
            [IpNet::V4(v4), IpNet::V6(v6)] => Ok(Cidrs {
                v4: *v4,
                v6: Some(*v6),
            }),
            _ => Err(CidrsError::Ipv6First),
        }
    }
}

impl fmt::Display for Cidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.all().iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_range_per_family_ipv4_first() {
        let dual: Cidrs = "10.42.0.0/16, fd00:42::/56".parse().unwrap();
        assert!(dual.dual_stack());
        assert_eq!(dual.ipv4().to_string(), "10.42.0.0/16");
        assert_eq!(
            dual.ipv6().map(|n| n.to_string()).as_deref(),
            Some("fd00:42::/56")
        );
        assert_eq!(dual.to_string(), "10.42.0.0/16,fd00:42::/56");
        let single: Cidrs = "10.43.0.5/16".parse().unwrap();
        assert_eq!(single.to_string(), "10.43.0.0/16");
        assert_eq!(
            "10.0.0.0/8,10.1.0.0/16".parse::<Cidrs>(),
            Err(CidrsError::SameFamily)
        );
        assert_eq!("fd00::/64".parse::<Cidrs>(), Err(CidrsError::Ipv6First));
        assert!(matches!(
            "ten".parse::<Cidrs>(),
            Err(CidrsError::NotACidr(_))
        ));
    }
}
