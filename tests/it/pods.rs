//! Real workloads on the agent inside `krab server`: a busybox image imported from an OCI
//! archive (no registry), a Deployment rolled out through the controllers and the
//! scheduler onto containerd, and what the pods serve reached over the pod network.
use std::process::Command;
use std::time::Duration;

use crate::busybox_image::{write_busybox_image, BUSYBOX};
use crate::pods_support::PodNetwork;
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
            + &s.log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
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
        let who = s.kubectl_with_token(
            &token,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        );
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
    wait_pods(&s, "the pod to run", Duration::from_secs(60), || {
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

/// `wait_for`, but a timeout shows the pods, their events and the end of the server's log.
fn wait_pods<T>(
    s: &Server,
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            let pods = s.kubectl(&["describe", "pods"]);
            let log = s.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "timed out waiting for {what}\n{}\n--- server log (last lines) ---\n{}",
                String::from_utf8_lossy(&pods.stdout),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pod_json(s: &Server, name: &str) -> serde_json::Value {
    serde_json::from_str(&s.kube_ok(&["get", "pod", name, "-o", "json"])).unwrap()
}

fn container_status<'a>(pod: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

/// A failing liveness probe restarts its container, a readiness probe gates Ready, a
/// crashing container restarts with back-off (and its previous log stays readable), and
/// postStart/preStop hooks run.
#[test]
fn probes_hooks_and_crash_loop_back_off() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    write_busybox_image(&data.join("agent/images"));
    let mut s = Server::start_with_agent(&data, &[]);
    let pods = write(
        dir.path(),
        "pods.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  terminationGracePeriodSeconds: 5
  volumes:
  - name: marks
    hostPath: {{path: {marks}}}
  containers:
  - name: live
    image: {BUSYBOX}
    command: [sh, -c, 'touch /tmp/healthy; sleep 3; rm /tmp/healthy; sleep 600']
    livenessProbe:
      exec: {{command: [cat, /tmp/healthy]}}
      periodSeconds: 1
      failureThreshold: 1
  - name: web
    image: {BUSYBOX}
    command: [sh, -c, 'exec httpd -f -p 8080 -h /var/www']
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      httpGet: {{path: /ready, port: http}}
      periodSeconds: 1
    volumeMounts: [{{name: marks, mountPath: /marks}}]
    lifecycle:
      postStart:
        exec: {{command: [sh, -c, 'echo started > /var/www/poststart']}}
      preStop:
        exec: {{command: [sh, -c, 'echo stopping > /marks/prestop']}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'echo "run at $(date +%s%N)"; exit 1']
"#,
            marks = marks.display()
        ),
    );
    s.kube_ok(&["apply", "-f", &pods]);

    // Readiness: not Ready until /ready exists, Ready after.
    wait_pods(
        &s,
        "the web container to run",
        Duration::from_secs(60),
        || {
            let p = pod_json(&s, "probed");
            container_status(&p, "web")["state"]["running"]
                .is_object()
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let p = pod_json(&s, "probed");
    assert_eq!(container_status(&p, "web")["ready"], false, "{p}");
    let ready = |p: &serde_json::Value| {
        p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    };
    assert!(!ready(&p));
    let hook = s.kube_ok(&[
        "exec",
        "probed",
        "-c",
        "web",
        "--",
        "cat",
        "/var/www/poststart",
    ]);
    assert_eq!(hook, "started\n");
    s.kube_ok(&[
        "exec",
        "probed",
        "-c",
        "web",
        "--",
        "touch",
        "/var/www/ready",
    ]);
    wait_for(
        "the web container to be ready",
        Duration::from_secs(20),
        || {
            let p = pod_json(&s, "probed");
            (container_status(&p, "web")["ready"] == true).then_some(())
        },
    );

    // Liveness: the container is killed and restarted once /tmp/healthy is gone.
    let live = wait_for("a liveness restart", Duration::from_secs(60), || {
        let p = pod_json(&s, "probed");
        let c = container_status(&p, "live").clone();
        (c["restartCount"].as_i64().unwrap_or(0) >= 1).then_some(c)
    });
    assert!(live["lastState"]["terminated"].is_object(), "{live}");
    let events = s.kube_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=probed",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("Unhealthy: Liveness probe failed"),
        "{events}"
    );
    assert!(
        events.contains("Killing: Container live failed liveness probe, will be restarted"),
        "{events}"
    );

    // A crashing container: restarted, then backed off.
    let crash = wait_for("crash loop back-off", Duration::from_secs(60), || {
        let p = pod_json(&s, "crasher");
        let c = container_status(&p, "c").clone();
        let backing_off = c["state"]["waiting"]["reason"] == "CrashLoopBackOff";
        (c["restartCount"].as_i64().unwrap_or(0) >= 1 && backing_off).then_some(c)
    });
    assert_eq!(crash["lastState"]["terminated"]["exitCode"], 1, "{crash}");
    let previous = s.kube_ok(&["logs", "crasher", "--previous"]);
    assert!(previous.starts_with("run at "), "{previous:?}");
    // The back-off grows: after the first (immediate) restart, each run starts at least
    // 10 s after the one before.
    // When the newest run started: running now, just ended, or (while backing off) the
    // last one.
    let started = |c: &serde_json::Value| {
        let t = [
            &c["state"]["running"]["startedAt"],
            &c["state"]["terminated"]["startedAt"],
            &c["lastState"]["terminated"]["startedAt"],
        ]
        .into_iter()
        .find_map(|v| v.as_str())
        .unwrap_or_default();
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp())
            .unwrap_or(0)
    };
    let first = crash["restartCount"].as_i64().unwrap();
    let later = wait_for("the next restart", Duration::from_secs(40), || {
        let p = pod_json(&s, "crasher");
        let c = container_status(&p, "c").clone();
        (c["restartCount"].as_i64().unwrap_or(0) > first && started(&c) > 0).then_some(c)
    });
    let gap = started(&later) - started(&crash);
    assert!(gap >= 9, "runs {gap} s apart: {crash} then {later}");

    // preStop runs when the pod is deleted.
    s.kube_ok(&["delete", "pod", "probed", "--timeout=60s"]);
    let mark = std::fs::read_to_string(marks.join("prestop")).unwrap_or_default();
    assert_eq!(mark, "stopping\n");
    s.stop();
}

/// configMap, secret, downwardAPI and projected token volumes hold the right content, env
/// comes from a ConfigMap key, limits reach the container's cgroup, and a container over its
/// memory limit is reported OOMKilled.
#[test]
fn volumes_env_limits_and_oom_kills() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    let mut s = Server::start_with_agent(&data, &[]);
    let manifests = write(
        dir.path(),
        "v.yaml",
        &format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{greeting: hello, mode: fast}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{password: s3cret}}
---
apiVersion: v1
kind: Pod
metadata:
  name: vols
  labels: {{app: vols}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sleep, "600"]
    env:
    - name: MODE
      valueFrom: {{configMapKeyRef: {{name: settings, key: mode}}}}
    - name: MY_POD
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    resources:
      limits: {{memory: 64Mi, cpu: 250m}}
    volumeMounts:
    - {{name: cm, mountPath: /cm}}
    - {{name: sec, mountPath: /sec}}
    - {{name: info, mountPath: /info}}
  volumes:
  - name: cm
    configMap: {{name: settings}}
  - name: sec
    secret: {{secretName: creds}}
  - name: info
    downwardAPI:
      items:
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: mem, resourceFieldRef: {{containerName: c, resource: limits.memory, divisor: 1Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    command: [tail, /dev/zero]
    resources:
      limits: {{memory: 32Mi}}
"#
        ),
    );
    s.kube_ok(&["apply", "-f", &manifests]);
    wait_pods(&s, "the pod to run", Duration::from_secs(60), || {
        let out = s.kube_ok(&["get", "pod", "vols", "-o", "jsonpath={.status.phase}"]);
        (out == "Running").then_some(())
    });
    let exec = |cmd: &[&str]| {
        let mut args = vec!["exec", "vols", "--"];
        args.extend_from_slice(cmd);
        s.kube_ok(&args)
    };
    assert_eq!(exec(&["cat", "/cm/greeting"]), "hello");
    assert_eq!(exec(&["cat", "/sec/password"]), "s3cret");
    assert_eq!(exec(&["cat", "/info/labels"]), "app=\"vols\"");
    assert_eq!(exec(&["cat", "/info/mem"]), "64");
    assert_eq!(exec(&["sh", "-c", "echo $MODE $MY_POD"]), "fast vols\n");
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(exec(&["cat", &format!("{sa}/namespace")]), "default");
    assert!(exec(&["cat", &format!("{sa}/ca.crt")]).contains("BEGIN CERTIFICATE"));
    assert_eq!(exec(&["cat", &format!("{sa}/token")]).split('.').count(), 3);
    // The limits, as the container's cgroup (v1 or v2) holds them.
    let memory = exec(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]);
    assert_eq!(memory.trim(), "67108864");
    let cpu = exec(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    ]);
    assert!(cpu.trim().starts_with("25000"), "{cpu}");

    let killed = wait_pods(
        &s,
        "the hog to be OOM-killed",
        Duration::from_secs(60),
        || {
            let p = pod_json(&s, "hog");
            let t = container_status(&p, "c")["state"]["terminated"].clone();
            t.is_object().then_some((p["status"]["phase"].clone(), t))
        },
    );
    assert_eq!(killed.1["reason"], "OOMKilled", "{killed:?}");
    assert_eq!(killed.1["exitCode"], 137, "{killed:?}");
    assert_eq!(killed.0, "Failed");
    s.stop();
}

/// A manifest in `<data-dir>/agent/pod-manifests/` runs as a static pod with a mirror pod in
/// the API (kube's annotations, the Node as owner, no service-account token), which comes
/// back when deleted and goes when its file goes.
#[test]
fn static_pods_run_from_manifest_files() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    let manifests = data.join("agent/pod-manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("static-web.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: static-web, labels: {{tier: static}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sleep, '600']\n"
        ),
    )
    .unwrap();
    let mut s = Server::start_with_agent(&data, &[]);
    let mirror = wait_pods(&s, "the mirror pod to run", Duration::from_secs(60), || {
        let out = s.kube_ok(&["get", "pods", "-l", "tier=static", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let p = v["items"].as_array()?.first()?.clone();
        (p["status"]["phase"] == "Running").then_some(p)
    });
    let node = mirror["spec"]["nodeName"].as_str().unwrap().to_string();
    let name = mirror["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(name, format!("static-web-{node}"));
    let annotations = &mirror["metadata"]["annotations"];
    assert_eq!(
        annotations["kubernetes.io/config.source"], "file",
        "{mirror}"
    );
    assert_eq!(
        annotations["kubernetes.io/config.mirror"],
        annotations["kubernetes.io/config.hash"]
    );
    assert_eq!(mirror["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert!(
        !mirror.to_string().contains("kube-api-access"),
        "no token volume in a mirror pod: {mirror}"
    );

    // Deleted, it comes back.
    let uid = mirror["metadata"]["uid"].as_str().unwrap().to_string();
    s.kube_ok(&["delete", "pod", &name, "--timeout=60s"]);
    wait_pods(
        &s,
        "the mirror pod to come back",
        Duration::from_secs(60),
        || {
            let out = s.kube_ok(&[
                "get",
                "pods",
                "-l",
                "tier=static",
                "-o",
                "jsonpath={.items[*].metadata.uid} {.items[*].status.phase}",
            ]);
            (!out.contains(&uid) && out.ends_with("Running")).then_some(())
        },
    );

    // The file goes, the pod goes.
    std::fs::remove_file(manifests.join("static-web.yaml")).unwrap();
    wait_pods(&s, "the static pod to go", Duration::from_secs(60), || {
        let out = s.kube_ok(&["get", "pods", "-l", "tier=static", "-o", "name"]);
        out.trim().is_empty().then_some(())
    });
    s.stop();
}

/// A container that logs a lot has its CRI log rotated past 10 MiB and keeps at most five
/// files, and goes on logging into the reopened file (what `kubectl logs` reads).
#[test]
fn container_logs_rotate_past_ten_mib() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    let mut s = Server::start_with_agent(&data, &[]);
    let pod = write(
        dir.path(),
        "chatty.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: chatty}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'line=$(printf "%0500d" 0); for i in $(seq 1 35); do yes "$line" | head -c 2000000; sleep 1; done; echo; echo finished; sleep 600']
"#
        ),
    );
    s.kube_ok(&["apply", "-f", &pod]);
    let uid = wait_pods(&s, "the pod to run", Duration::from_secs(60), || {
        let out = s.kube_ok(&[
            "get",
            "pod",
            "chatty",
            "-o",
            "jsonpath={.status.phase} {.metadata.uid}",
        ]);
        out.strip_prefix("Running ").map(str::to_string)
    });
    let log_dir = std::path::PathBuf::from(format!("/var/log/pods/default_chatty_{uid}/c"));
    let files = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&log_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    wait_pods(&s, "a rotated log", Duration::from_secs(60), || {
        files()
            .iter()
            .any(|f| f.starts_with("0.log."))
            .then_some(())
    });
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let last = loop {
        let out = s.kubectl(&["logs", "chatty", "--tail=1"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text == "finished\n" {
            break text;
        }
        seen = format!(
            "{:?} {}",
            &text[..text.len().min(40)],
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the writer did not finish: last {seen}; files {:?}",
            files()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let _ = seen;
    assert_eq!(last, "finished\n");
    let names = files();
    assert!(names.len() <= 5, "at most five files: {names:?}");
    assert!(names.contains(&"0.log".to_string()), "{names:?}");
    s.kube_ok(&["delete", "pod", "chatty", "--timeout=60s"]);
    s.stop();
}

#[test]
fn privileged_containers_run_with_every_capability() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    let s = Server::start_with_agent(&data, &[]);
    let pod = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: priv}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sleep, \"600\"]
    securityContext: {{privileged: true}}
"
    );
    s.kube_ok(&["apply", "-f", &write(dir.path(), "priv.yaml", &pod)]);
    wait_for(
        "the privileged pod running",
        Duration::from_secs(90),
        || {
            (s.kube_ok(&["get", "pod", "priv", "-o", "jsonpath={.status.phase}"]) == "Running")
                .then_some(())
        },
    );
    let status = s.kube_ok(&["exec", "priv", "--", "cat", "/proc/1/status"]);
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    // CAP_SYS_ADMIN (bit 21) and the rest, not the runtime's default set (00000000a80425fb).
    let caps = u64::from_str_radix(&effective, 16).unwrap_or(0);
    assert!(caps & (1 << 21) != 0, "{effective}");
    assert!(caps.count_ones() > 30, "{effective}");
}
