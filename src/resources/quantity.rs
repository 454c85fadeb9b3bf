//! Kubernetes resource quantities as numbers (`250m`, `64Mi`, `1.5G`), for the scheduler's
//! fit and the agent's cgroup limits and downward API.
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity in thousandths (CPU in millicores; memory in milli-bytes, compared only).
pub fn milli(q: &Quantity) -> i128 {
    let s = q.0.trim();
    let suffixes: [(&str, f64); 15] = [
        ("n", 1e-9),
        ("u", 1e-6),
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, mult) in suffixes {
        if let Some(n) = s.strip_suffix(suffix) {
            return n
                .parse::<f64>()
                .map(|n| (n * mult * 1000.0).round() as i128)
                .unwrap_or(0);
        }
    }
    s.parse::<f64>()
        .map(|n| (n * 1000.0).round() as i128)
        .unwrap_or(0)
}

/// A byte amount written as a quantity (`100Mi`, or a plain number; None when it is not
/// one): what flags like `--eviction-hard` take.
pub fn parse_bytes(s: &str) -> Option<i64> {
    let s = s.trim();
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits);
    let known = [
        "", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if number.is_empty() || number.parse::<f64>().is_err() || !known.contains(&suffix) {
        return None;
    }
    i64::try_from(milli(&Quantity(s.to_string())) / 1000).ok()
}

/// A byte amount in kube's canonical form (`100Mi`, `91392Ki`).
pub fn format_bytes(bytes: i64) -> String {
    format(i128::from(bytes) * 1000, true)
}

/// A quantity in thousandths written back in kube's canonical form: millis when fractional
/// (`1500m`), else the largest suffix that keeps it whole. Byte-like amounts (`binary`) use
/// 1024-based suffixes when a multiple of 1 Ki (`64Mi`), else decimal ones (`1G`).
pub fn format(milli: i128, binary: bool) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let v = milli / 1000;
    if v == 0 {
        return "0".into();
    }
    if binary && v % 1024 == 0 {
        let mut n = v;
        let mut i = 0;
        while n % 1024 == 0 && i < 6 {
            n /= 1024;
            i += 1;
        }
        return format!("{n}{}", ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][i]);
    }
    let mut n = v;
    let mut i = 0;
    while n % 1000 == 0 && i < 6 {
        n /= 1000;
        i += 1;
    }
    format!("{n}{}", ["", "k", "M", "G", "T", "P", "E"][i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_written_back_canonically() {
        let q = |s: &str| milli(&Quantity(s.into()));
        assert_eq!(format(q("1.5"), false), "1500m");
        assert_eq!(format(q("2000m"), false), "2");
        assert_eq!(format(q("0"), true), "0");
        assert_eq!(format(q("64Mi") + q("64Mi"), true), "128Mi");
        assert_eq!(format(q("1G"), true), "1G");
        assert_eq!(format(q("1500"), true), "1500");
        assert_eq!(format(q("3000"), false), "3k");
        // metrics-server's units: nanocores.
        assert_eq!(q("200000000n"), 200);
        assert_eq!(q("1500u"), 2);
    }
}
