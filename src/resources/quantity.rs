//! Kubernetes resource quantities as numbers (`250m`, `64Mi`, `1.5G`), for the scheduler's
//! fit and the agent's cgroup limits and downward API.
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity in thousandths (CPU in millicores; memory in milli-bytes, compared only).
pub fn milli(q: &Quantity) -> i128 {
    let s = q.0.trim();
    let suffixes: [(&str, f64); 13] = [
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
