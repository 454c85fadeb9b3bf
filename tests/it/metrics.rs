//! Resource metrics end to end on the agent inside `krab server`: a pod burning CPU shows in
//! the kubelet's `/stats/summary`, in `kubectl top pod` and `kubectl top node` through the
//! API server's metrics.k8s.io, and a HorizontalPodAutoscaler on CPU utilization scales its
//! Deployment up from it.
use std::time::Duration;

use crate::busybox_image::{write_busybox_image, BUSYBOX};
use crate::pods_support::PodNetwork;
use crate::support::{wait_for, write, Server};

/// Millicores from `kubectl top`'s CPU column (`123m`).
fn millicores(column: &str) -> Option<u64> {
    column.strip_suffix('m')?.parse().ok()
}

#[test]
fn kubectl_top_and_the_autoscaler_see_real_cpu_use() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    let s = Server::start_with_agent(&data, &[]);
    let burner = write(
        dir.path(),
        "burn.yaml",
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: burn}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: burn}}}}
  template:
    metadata: {{labels: {{app: burn}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: spin
        image: {BUSYBOX}
        command: [sh, -c, 'while :; do :; done']
        resources: {{requests: {{cpu: 50m}}, limits: {{cpu: 200m}}}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: burn}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: burn}}
  minReplicas: 1
  maxReplicas: 3
  metrics: [{{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}}}]
"#
        ),
    );
    s.kube_ok(&["apply", "-f", &burner]);
    // The pod's usage (about its 200m limit) shows in kubectl top once two samples exist.
    let used = wait_for("kubectl top pod", Duration::from_secs(90), || {
        let out = s.kubectl(&["top", "pod", "-l", "app=burn", "--no-headers"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let first = text.lines().next()?.to_string();
        let m = millicores(first.split_whitespace().nth(1)?)?;
        (out.status.success() && m >= 50).then_some(m)
    });
    eprintln!("burner uses {used}m");
    assert!(used <= 400, "a 200m limit holds: {used}m");
    let node = s.kube_ok(&["top", "node", "--no-headers"]);
    let cols: Vec<&str> = node.split_whitespace().collect();
    assert!(cols.len() >= 5, "{node}");
    assert!(millicores(cols[1]).is_some_and(|m| m >= 50), "{node}");
    assert!(cols[3].ends_with("Mi"), "{node}");
    // The same samples in Prometheus' format on the kubelet's /metrics/resource, through the
    // API server's node proxy.
    let node_name = cols[0];
    let text = s.kube_ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node_name}/proxy/metrics/resource"),
    ]);
    assert!(text.contains("resource_scrape_error 0"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("container_cpu_usage_seconds_total{container=\"spin\",namespace=\"default\",pod=\"burn-")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("node_memory_working_set_bytes ")),
        "{text}"
    );
    // Utilization far above 50% of the 50m request: the autoscaler scales to its maximum.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while s.kube_ok(&[
        "get",
        "deployment",
        "burn",
        "-o",
        "jsonpath={.spec.replicas}",
    ]) != "3"
    {
        if std::time::Instant::now() > deadline {
            let hpa = s.kube_ok(&["get", "hpa", "burn", "-o", "yaml"]);
            let events = s.kube_ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.kind=HorizontalPodAutoscaler",
            ]);
            panic!("the autoscaler did not scale to 3:\n{hpa}\n{events}");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let active = s.kube_ok(&[
        "get",
        "hpa",
        "burn",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"ScalingActive\")].reason}",
    ]);
    assert_eq!(active, "ValidMetricFound");
    s.kube_ok(&["delete", "deployment", "burn", "--wait=false"]);
}
