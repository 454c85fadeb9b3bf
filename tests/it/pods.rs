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

/// `kubectl logs` (tail, follow, limit), `exec` (with stdin), and `port-forward` reach the
/// containers through the API server and the kubelet API.
#[test]
fn logs_exec_and_port_forward_reach_the_containers() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    let mut s = Server::start_with_agent(&data, &[]);
    let pod = write(
        dir.path(),
        "talker.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: talker}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: talker
    image: {BUSYBOX}
    command: [sh, -c, 'i=0; while true; do echo "line $i"; i=$((i+1)); sleep 0.2; done']
  - name: web
    image: {BUSYBOX}
    command: [sh, -c, 'echo forwarded > /var/www/index.html; exec httpd -f -p 8080 -h /var/www']
"#
        ),
    );
    s.kube_ok(&["apply", "-f", &pod]);
    wait_for("the pod to run", Duration::from_secs(60), || {
        let out = s.kube_ok(&["get", "pod", "talker", "-o", "jsonpath={.status.phase}"]);
        (out == "Running").then_some(())
    });

    // Logs: the last lines, then only what is written after the request (follow).
    wait_for("a few lines", Duration::from_secs(20), || {
        let out = s.kube_ok(&["logs", "talker", "-c", "talker", "--tail=2"]);
        (out.lines().count() == 2 && out.lines().all(|l| l.starts_with("line "))).then_some(())
    });
    let out = s.kube_ok(&[
        "logs",
        "talker",
        "-c",
        "talker",
        "-f",
        "--tail=0",
        "--limit-bytes=14",
    ]);
    assert_eq!(out.len(), 14, "{out:?}");
    assert!(out.starts_with("line "), "{out:?}");
    let stamped = s.kube_ok(&["logs", "talker", "-c", "talker", "--tail=1", "--timestamps"]);
    assert!(stamped.contains("Z line "), "{stamped:?}");
    let err = s.kube_err(&["logs", "talker", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod talker"),
        "{err}"
    );

    // exec, with and without stdin.
    let out = s.kube_ok(&[
        "exec",
        "talker",
        "-c",
        "web",
        "--",
        "cat",
        "/var/www/index.html",
    ]);
    assert_eq!(out, "forwarded\n");
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", s.kubeconfig())
        .args([
            "exec",
            "-i",
            "talker",
            "-c",
            "web",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"shout\n").unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "exec -i did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "SHOUT\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = s.kubectl(&["exec", "talker", "-c", "web", "--", "sh", "-c", "exit 3"]);
    assert_eq!(failed.status.code(), Some(3));

    // port-forward: a local port reaches the container's port 8080.
    let local = crate::support::free_port();
    let mut forward = Command::new("kubectl")
        .env("KUBECONFIG", s.kubeconfig())
        .args(["port-forward", "pod/talker", &format!("{local}:8080")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let page = wait_for("the forwarded port", Duration::from_secs(20), || {
        curl(&format!("http://127.0.0.1:{local}/"))
    });
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(page, "forwarded\n");
    s.stop();
}
