//! Three machines on one: a server and two agents, each in a network namespace of its own
//! (veth pairs on a bridge in the server's namespace), each agent with its own containerd.
//! A pod on node A fetches, by DNS name, a Service whose only endpoint is on node B (the
//! VXLAN overlay between them); node ports and a LoadBalancer answer on the node addresses;
//! deleting the endpoint makes the cluster IP refuse at once. The VXLAN cluster is
//! dual-stack: pods also reach each other over IPv6 through the same tunnel.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::busybox_image::{write_busybox_image, BUSYBOX};
use crate::pods_support::{http_body, nc_get_script, PodNetwork};
use crate::support::{run_bounded, wait_for, write};

fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// The namespaces and links of one test, removed when dropped.
struct Machines {
    tag: String,
}

impl Machines {
    fn ns(&self, which: &str) -> String {
        format!("k{}{which}", self.tag)
    }

    fn new() -> Machines {
        let m = Machines {
            tag: format!("{}", std::process::id() % 100000),
        };
        let srv = m.ns("s");
        ip(&["netns", "add", &srv]);
        ip(&["-n", &srv, "link", "set", "lo", "up"]);
        ip(&["-n", &srv, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &srv, "addr", "add", "10.99.0.1/24", "dev", "br0"]);
        ip(&["-n", &srv, "link", "set", "br0", "up"]);
        for (which, addr) in [("a", "10.99.0.2/24"), ("b", "10.99.0.3/24")] {
            let ns = m.ns(which);
            let host_end = format!("kv{}{which}", m.tag);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &host_end, "netns", &srv]);
            ip(&["-n", &srv, "link", "set", &host_end, "master", "br0", "up"]);
            ip(&["-n", &ns, "addr", "add", addr, "dev", "eth0"]);
            if which == "b" {
                // Node B's external address (--node-external-ip).
                ip(&["-n", &ns, "addr", "add", "10.99.0.13/24", "dev", "eth0"]);
            }
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "route", "add", "default", "via", "10.99.0.1"]);
        }
        m
    }

    /// A program in one machine's network namespace. (Not `ip netns exec`: it also mounts
    /// a fresh /sys, hiding the cgroup mounts runc needs.)
    fn exec(&self, which: &str, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.ns(which)))
            .arg("--")
            .arg(program);
        cmd
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        for which in ["a", "b", "s"] {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.ns(which)])
                .status();
        }
    }
}

/// A krab process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: &Path) -> Proc {
        let file = std::fs::File::create(log).unwrap();
        cmd.env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        Proc {
            child: cmd.spawn().unwrap(),
            log: log.to_path_buf(),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(40).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    // Fields drop in order: the processes stop before their namespaces go.
    procs: Vec<Proc>,
    m: Machines,
    kubeconfig: PathBuf,
    dual_stack: bool,
}

impl Cluster {
    fn kubectl(&self, args: &[&str]) -> Output {
        let mut cmd = self.m.exec("s", "kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        run_bounded(cmd, Duration::from_secs(60))
    }

    fn kube_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.log.display(), p.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// GET / from the `client` pod (busybox nc); the body when it worked.
    fn http_get(&self, host: &str, port: u16) -> (bool, String) {
        let (ok, text) = self.exec_client(&["sh", "-c", &nc_get_script(host, port)]);
        http_body(ok, text)
    }

    /// A command in the `client` pod: whether it succeeded, and all it said.
    fn exec_client(&self, cmd: &[&str]) -> (bool, String) {
        let mut args = vec!["exec", "client", "--"];
        args.extend_from_slice(cmd);
        let out = self.kubectl(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// GET / from the server's machine (outside the cluster).
    fn curl_from_outside(&self, url: &str) -> Option<String> {
        let mut cmd = self.m.exec("s", "curl");
        cmd.args(["-sf", "--max-time", "5", url]);
        let out = run_bounded(cmd, Duration::from_secs(10));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The ranges of a dual-stack cluster (IPv4 first), for the server and every agent.
const DUAL_STACK: [&str; 4] = [
    "--cluster-cidr",
    "10.42.0.0/16,fd00:42::/56",
    "--service-cidr",
    "10.43.0.0/16,fd00:43::/112",
];

fn start(dir: &Path, backend: &str, dual_stack: bool) -> Cluster {
    let ranges: &[&str] = if dual_stack { &DUAL_STACK } else { &[] };
    let m = Machines::new();
    let krab = env!("CARGO_BIN_EXE_krab");
    let server_data = dir.join("server");
    let kubeconfig = dir.join("admin.yaml");
    let mut server = m.exec("s", krab);
    server
        .args(["server", "--config", "/dev/null", "--disable-agent"])
        .args(["--node-name", "server", "--advertise-address", "10.99.0.1"])
        .args(ranges)
        .arg("--data-dir")
        .arg(&server_data)
        .arg("--write-kubeconfig")
        .arg(&kubeconfig);
    let mut procs = vec![Proc::spawn(server, &dir.join("server.log"))];
    let token_file = server_data.join("server/node-token");
    let token = wait_for("the node token", Duration::from_secs(30), || {
        std::fs::read_to_string(&token_file)
            .ok()
            .map(|t| t.trim().to_string())
    });
    // Node A finds its address on the interface it is told to use; node B is told its
    // addresses.
    let addressing: [(&str, &[&str]); 2] = [
        ("a", &["--pod-network-iface", "eth0"]),
        (
            "b",
            &["--node-ip", "10.99.0.3", "--node-external-ip", "10.99.0.13"],
        ),
    ];
    for (which, flags) in addressing {
        let data = dir.join(format!("node-{which}"));
        write_busybox_image(&data.join("agent/images"));
        let mut agent = m.exec(which, krab);
        agent
            .args(["agent", "--config", "/dev/null"])
            .args(["--node-name", &format!("node-{which}")])
            .args(flags)
            .args(["--server", "https://10.99.0.1:6443", "--token", &token])
            .args(["--pod-network-backend", backend])
            .args(ranges)
            .arg("--data-dir")
            .arg(&data);
        procs.push(Proc::spawn(agent, &dir.join(format!("node-{which}.log"))));
    }
    Cluster {
        procs,
        m,
        kubeconfig,
        dual_stack,
    }
}

#[test]
fn a_pod_reaches_a_service_on_another_node_by_name() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "vxlan", true);
    wait_ready_nodes(&c);
    run_scenario(&c, dir.path());
}

/// The same machines with routes instead of an overlay (they share one L2 segment).
#[test]
fn pods_reach_each_other_across_nodes_with_host_gw_routes() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "host-gw", false);
    wait_ready_nodes(&c);
    run_scenario(&c, dir.path());
}

fn wait_ready_nodes(c: &Cluster) {
    wait_for("two Ready nodes", Duration::from_secs(90), || {
        let out = c.kubectl(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.lines().filter(|l| *l == "True").count() == 2).then_some(())
    });
}

fn run_scenario(c: &Cluster, dir: &Path) {
    let manifests = write(
        dir,
        "app.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  nodeName: node-b
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {BUSYBOX}
    command: [sh, -c, 'echo "hello from $(hostname)" > /var/www/index.html; exec httpd -f -p 8080 -h /var/www']
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: node-a
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {BUSYBOX}
    command: [sleep, '3600']
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http, nodePort: 30080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: webloc}}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http, nodePort: 30081}}]
---
apiVersion: v1
kind: Service
metadata: {{name: weblb}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  ports: [{{name: http, port: 8081, targetPort: http}}]
"#
        ),
    );
    c.kube_ok(&["apply", "-f", &manifests]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let out = c.kube_ok(&[
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ]);
        if out.lines().filter(|l| *l == "True").count() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pods not ready: {}\n{}",
            c.kube_ok(&["describe", "pods"]),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // By name, from node A, to the only endpoint on node B (through the overlay).
    let by_name = "$(nslookup web 2>/dev/null | awk '/^Address: /{print $2}' | tail -n 1)";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let page = loop {
        let (ok, out) = c.http_get(by_name, 80);
        if ok {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the service by name: {out}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(page.trim(), "hello from web");
    let cluster_ip = c.kube_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    // The other records: SRV for the named port, PTR for the cluster IP, a name from the
    // host's /etc/hosts (forwarded), an unknown service (NXDOMAIN).
    let (ok, out) = c.exec_client(&[
        "nslookup",
        "-type=srv",
        "_http._tcp.web.default.svc.cluster.local",
    ]);
    assert!(
        ok && out.contains("80 web.default.svc.cluster.local"),
        "{out}"
    );
    let (ok, out) = c.exec_client(&["nslookup", &cluster_ip]);
    assert!(ok && out.contains("web.default.svc.cluster.local"), "{out}");
    let (ok, out) = c.exec_client(&["nslookup", "localhost."]);
    assert!(ok && out.contains("127.0.0.1"), "{out}");
    let (ok, out) = c.exec_client(&["nslookup", "nope.default.svc.cluster.local"]);
    assert!(!ok && out.contains("NXDOMAIN"), "{out}");

    // NetworkPolicy, enforced on node B for traffic from node A: denying ingress to the
    // web pod blocks the client; allowing the client's namespace restores it.
    let deny = write(
        dir,
        "deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-web}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
    );
    c.kube_ok(&["apply", "-f", &deny]);
    let blocked = wait_for("the policy to block", Duration::from_secs(30), || {
        let (ok, out) = c.http_get(&cluster_ip, 80);
        (!ok).then_some(out)
    });
    assert!(!blocked.contains("HTTP/1."), "{blocked}");
    let allow = write(
        dir,
        "allow.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-default}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}}]\n",
    );
    c.kube_ok(&["apply", "-f", &allow]);
    wait_for("the policy to allow", Duration::from_secs(30), || {
        let (ok, _) = c.http_get(&cluster_ip, 80);
        ok.then_some(())
    });
    c.kube_ok(&["delete", "networkpolicy", "deny-web", "allow-default"]);

    // Pod to pod across nodes, by pod IP.
    let web_ip = c.kube_ok(&["get", "pod", "web", "-o", "jsonpath={.status.podIP}"]);
    let (ok, out) = c.http_get(&web_ip, 8080);
    assert!(ok, "{out}");
    // On a dual-stack cluster, pod to pod across nodes over IPv6 too (the same tunnel).
    let web_ips = c.kube_ok(&["get", "pod", "web", "-o", "jsonpath={.status.podIPs[*].ip}"]);
    let v6 = web_ips.split_whitespace().find(|ip| ip.contains(':'));
    assert_eq!(v6.is_some(), c.dual_stack, "{web_ips}");
    if let Some(v6) = v6 {
        let (ok, out) = c.http_get(v6, 8080);
        assert!(ok, "over IPv6 to {v6}: {out}");
    }
    // Beyond the cluster: the server's machine has no route back to pods, so this works
    // only because the pod's traffic leaves node A with the node's address.
    let (ok, out) = c.exec_client(&[
        "sh",
        "-c",
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 10.99.0.1 6443",
    ]);
    assert!(ok, "a pod reaching outside the cluster: {out}");

    // The node port on both nodes' addresses, from outside the cluster.
    for node in ["10.99.0.2", "10.99.0.3"] {
        let out = c.curl_from_outside(&format!("http://{node}:30080/"));
        assert_eq!(
            out.as_deref().map(str::trim),
            Some("hello from web"),
            "{node}"
        );
    }
    // externalTrafficPolicy Local: only the node with an endpoint answers.
    let out = c.curl_from_outside("http://10.99.0.3:30081/");
    assert_eq!(out.as_deref().map(str::trim), Some("hello from web"));
    assert_eq!(c.curl_from_outside("http://10.99.0.2:30081/"), None);

    // The load balancer: the nodes' addresses in its status, answering on its port.
    let ingress = wait_for("load balancer addresses", Duration::from_secs(30), || {
        let out = c.kube_ok(&[
            "get",
            "svc",
            "weblb",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ip}",
        ]);
        (out.split_whitespace().count() == 2).then_some(out)
    });
    // Node B is reached at its external address.
    assert_eq!(ingress, "10.99.0.13 10.99.0.2");
    for node in ["10.99.0.2", "10.99.0.13"] {
        let out = wait_for("the load balancer port", Duration::from_secs(20), || {
            c.curl_from_outside(&format!("http://{node}:8081/"))
        });
        assert_eq!(out.trim(), "hello from web", "{node}");
    }

    // The endpoint goes: the cluster IP refuses at once.
    c.kube_ok(&["delete", "pod", "web", "--wait=true"]);
    let out = wait_for("a refusal", Duration::from_secs(30), || {
        let (ok, out) = c.http_get(&cluster_ip, 80);
        (!ok && out.contains("refused")).then_some(out)
    });
    assert!(out.contains("refused"), "{out}");
}
