//! The kubelet's `/metrics/resource`: the last resource sample in Prometheus' text format,
//! with the metric names, help and labels of kube's resource metrics endpoint (what
//! metrics-server scrapes on kube): cumulative CPU seconds and working-set bytes for the
//! node, each pod and each container, each sample at the time it was taken.
use std::fmt::Write;

use super::resource_stats::{CpuStats, MemoryStats, Summary};

fn millis(time: &str) -> Option<i64> {
    let t: k8s_openapi::jiff::Timestamp = time.parse().ok()?;
    Some(t.as_millisecond())
}

/// Prometheus' label value escaping.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<String>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: &'static str) -> Self {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn cpu(&mut self, pairs: &[(&str, &str)], cpu: &CpuStats) {
        if let (Some(ns), Some(at)) = (cpu.usage_core_nano_seconds, millis(&cpu.time)) {
            let seconds = ns as f64 / 1e9;
            self.samples
                .push(format!("{}{} {seconds} {at}", self.name, labels(pairs)));
        }
    }

    fn memory(&mut self, pairs: &[(&str, &str)], memory: &MemoryStats) {
        if let (Some(bytes), Some(at)) = (memory.working_set_bytes, millis(&memory.time)) {
            self.samples
                .push(format!("{}{} {bytes} {at}", self.name, labels(pairs)));
        }
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} [STABLE] {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for s in &self.samples {
            let _ = writeln!(out, "{s}");
        }
    }
}

/// The exposition of a summary (None: nothing sampled yet, which is a scrape error).
pub fn render(summary: Option<&Summary>) -> String {
    let mut container_cpu = Family::new(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the container in core-seconds",
        "counter",
    );
    let mut container_memory = Family::new(
        "container_memory_working_set_bytes",
        "Current working set of the container in bytes",
        "gauge",
    );
    let mut node_cpu = Family::new(
        "node_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the node in core-seconds",
        "counter",
    );
    let mut node_memory = Family::new(
        "node_memory_working_set_bytes",
        "Current working set of the node in bytes",
        "gauge",
    );
    let mut pod_cpu = Family::new(
        "pod_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the pod in core-seconds",
        "counter",
    );
    let mut pod_memory = Family::new(
        "pod_memory_working_set_bytes",
        "Current working set of the pod in bytes",
        "gauge",
    );
    if let Some(s) = summary {
        node_cpu.cpu(&[], &s.node.cpu);
        node_memory.memory(&[], &s.node.memory);
        for p in &s.pods {
            let pod = [
                ("namespace", p.pod_ref.namespace.as_str()),
                ("pod", p.pod_ref.name.as_str()),
            ];
            pod_cpu.cpu(&pod, &p.cpu);
            pod_memory.memory(&pod, &p.memory);
            for c in &p.containers {
                let container = [
                    ("container", c.name.as_str()),
                    ("namespace", p.pod_ref.namespace.as_str()),
                    ("pod", p.pod_ref.name.as_str()),
                ];
                container_cpu.cpu(&container, &c.cpu);
                container_memory.memory(&container, &c.memory);
            }
        }
    }
    let mut out = String::new();
    for f in [
        &container_cpu,
        &container_memory,
        &node_cpu,
        &node_memory,
        &pod_cpu,
        &pod_memory,
    ] {
        f.write(&mut out);
    }
    let _ = writeln!(
        out,
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise"
    );
    let _ = writeln!(out, "# TYPE resource_scrape_error gauge");
    let _ = writeln!(
        out,
        "resource_scrape_error {}",
        if summary.is_some() { 0 } else { 1 }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::super::resource_stats::{ContainerStats, NodeStats, PodReference, PodStats};
    use super::*;

    #[test]
    fn samples_read_as_the_kubelet_s_resource_metrics() {
        let at = "2026-11-25T10:00:00Z".to_string();
        let cpu = |ns| CpuStats {
            time: at.clone(),
            usage_nano_cores: None,
            usage_core_nano_seconds: Some(ns),
        };
        let mem = |b| MemoryStats {
            time: at.clone(),
            working_set_bytes: Some(b),
            usage_bytes: None,
            available_bytes: None,
        };
        let summary = Summary {
            node: NodeStats {
                node_name: "n1".into(),
                cpu: cpu(2_500_000_000),
                memory: mem(1024),
            },
            pods: vec![PodStats {
                pod_ref: PodReference {
                    name: "web".into(),
                    namespace: "default".into(),
                    uid: "u".into(),
                },
                containers: vec![ContainerStats {
                    name: "c".into(),
                    cpu: cpu(500_000_000),
                    memory: mem(512),
                }],
                cpu: cpu(500_000_000),
                memory: mem(512),
            }],
        };
        let text = render(Some(&summary));
        let ms = 1_795_600_800_000_i64;
        for line in [
            "# TYPE container_cpu_usage_seconds_total counter".to_string(),
            format!("container_cpu_usage_seconds_total{{container=\"c\",namespace=\"default\",pod=\"web\"}} 0.5 {ms}"),
            format!("container_memory_working_set_bytes{{container=\"c\",namespace=\"default\",pod=\"web\"}} 512 {ms}"),
            format!("node_cpu_usage_seconds_total 2.5 {ms}"),
            format!("pod_memory_working_set_bytes{{namespace=\"default\",pod=\"web\"}} 512 {ms}"),
            "resource_scrape_error 0".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        assert!(render(None).ends_with("resource_scrape_error 1\n"));
    }
}
