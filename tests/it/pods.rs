//! Real workloads on the agent inside `krab server`: a busybox image imported from an OCI
//! archive (no registry), a Deployment rolled out through the controllers and the
//! scheduler onto containerd, and what the pods serve reached over the pod network.
use std::process::Command;
use std::time::Duration;

use crate::pods_support::{write_busybox_image, PodNetwork, BUSYBOX};
use crate::support::{run_bounded, wait_for, write, Server};

fn curl(url: &str) -> Option<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sf", "--max-time", "5", url]);
    let out = run_bounded(cmd, Duration::from_secs(10));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Three busybox httpd replicas reach Running with IPs from the node's range, each serves
/// its own page, and each holds a working service-account token in its automounted volume.
#[test]
fn a_deployment_of_busybox_httpd_runs_and_serves() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    let mut s = Server::start_with_agent(&data, &[]);
    let deployment = write(
        dir.path(),
        "web.yaml",
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: httpd
        image: {BUSYBOX}
        command: [sh, -c]
        args:
        - |
          echo "hello from $(hostname)" > /var/www/index.html
          cp /var/run/secrets/kubernetes.io/serviceaccount/token /var/www/token
          cp /var/run/secrets/kubernetes.io/serviceaccount/namespace /var/www/namespace
          exec httpd -f -p 8080 -h /var/www
        resources: {{limits: {{memory: 64Mi, cpu: 200m}}}}
"#
        ),
    );
    s.kube_ok(&["apply", "-f", &deployment]);
    let out = s.kubectl(&[
        "rollout",
        "status",
        "deployment/web",
        "--timeout=120s",
        "--request-timeout=0",
    ]);
    assert!(
        out.status.success(),
        "rollout: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.kube_ok(&["get", "pods", "-o", "wide"])
    );
    let pods: serde_json::Value =
        serde_json::from_str(&s.kube_ok(&["get", "pods", "-l", "app=web", "-o", "json"])).unwrap();
    let pods = pods["items"].as_array().unwrap().clone();
    assert_eq!(pods.len(), 3);
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap();
        assert_eq!(pod["status"]["phase"], "Running", "{name}");
        let ip = pod["status"]["podIP"].as_str().unwrap();
        assert!(ip.starts_with("10.42."), "{name}: {ip}");
        let page = wait_for("the pod's page", Duration::from_secs(20), || {
            curl(&format!("http://{ip}:8080/"))
        });
        assert_eq!(page.trim(), format!("hello from {name}"));
        let ns = curl(&format!("http://{ip}:8080/namespace")).unwrap();
        assert_eq!(ns, "default");
        // The automounted token is a bound token the API server accepts.
        let token = curl(&format!("http://{ip}:8080/token")).unwrap();
        let mut cmd = Command::new("kubectl");
        cmd.env_remove("KUBERNETES_SERVICE_HOST")
            .arg("--kubeconfig=/dev/null")
            .arg(format!("--server=https://127.0.0.1:{}", s.api_port))
            .arg("--insecure-skip-tls-verify")
            .arg(format!("--token={token}"))
            .args([
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ]);
        let who = run_bounded(cmd, Duration::from_secs(20));
        assert_eq!(
            String::from_utf8_lossy(&who.stdout),
            "system:serviceaccount:default:default",
            "{}",
            String::from_utf8_lossy(&who.stderr)
        );
    }

    // Scaling down removes pods and their containers.
    s.kube_ok(&["scale", "deployment/web", "--replicas=1"]);
    wait_for("two pods to go", Duration::from_secs(60), || {
        let out = s.kube_ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
        (out.lines().count() == 1).then_some(())
    });
    s.stop();
}
