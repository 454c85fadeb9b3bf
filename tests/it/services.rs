//! Services on one node through the agent's own service proxy (nftables through netlink) and
//! cluster DNS: a pod fetches an httpd Service by DNS name, a NetworkPolicy blocks and then
//! allows it, the node port answers from the host, the rules are what `nft -j list table ip
//! krab` shows, a Service without endpoints refuses at once, and `krab agent --cleanup`
//! removes the table.
use std::process::Command;
use std::time::Duration;

use crate::busybox_image::{write_busybox_image, BUSYBOX};
use crate::pods_support::{http_body, nc_get_script, PodNetwork};
use crate::support::{free_port, run_bounded, wait_for, write, Server};

/// This host's address on its default route (pods reach the node's DNS server there).
fn host_ip() -> String {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("1.1.1.1:9").unwrap();
    s.local_addr().unwrap().ip().to_string()
}

fn nft_table() -> Option<serde_json::Value> {
    let mut cmd = Command::new("nft");
    cmd.args(["-j", "list", "table", "ip", "krab"]);
    let out = run_bounded(cmd, Duration::from_secs(10));
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// The rules of one chain, as nft's JSON statements.
fn chain_rules(table: &serde_json::Value, chain: &str) -> Vec<serde_json::Value> {
    table["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["chain"] == chain)
        .map(|r| r["expr"].clone())
        .collect()
}

fn exec(s: &Server, pod: &str, cmd: &[&str]) -> (bool, String) {
    let mut args = vec!["exec", pod, "--"];
    args.extend_from_slice(cmd);
    let out = s.kubectl(&args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// GET / from the `client` pod; the body when the exchange worked, else what went wrong.
fn http_get(s: &Server, host: &str, port: u16) -> (bool, String) {
    http_get_from(s, "client", host, port)
}

fn http_get_from(s: &Server, pod: &str, host: &str, port: u16) -> (bool, String) {
    let (ok, out) = exec(s, pod, &["sh", "-c", &nc_get_script(host, port)]);
    http_body(ok, out)
}

#[test]
fn a_pod_reaches_a_service_by_name_and_node_ports_answer() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    let ip = host_ip();
    let dns_port = free_port().to_string();
    let mut s = Server::start_with_agent(
        &data,
        &["--advertise-address", &ip, "--dns-port", &dns_port],
    );
    let node_port = 30000 + free_port() % 2700;
    let manifests = write(
        dir.path(),
        "web.yaml",
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {BUSYBOX}
        command: [sh, -c, 'echo "hello from $(hostname)" > /var/www/index.html; exec httpd -f -p 8080 -h /var/www']
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http, nodePort: {node_port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sticky}}
spec:
  selector: {{app: web}}
  sessionAffinity: ClientIP
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {BUSYBOX}
    command: [sleep, '3600']
"#
        ),
    );
    s.kube_ok(&["apply", "-f", &manifests]);
    let out = s.kubectl(&[
        "rollout",
        "status",
        "deployment/web",
        "--timeout=120s",
        "--request-timeout=0",
    ]);
    assert!(out.status.success(), "{}", s.log());
    wait_for("the client pod", Duration::from_secs(60), || {
        let out = s.kube_ok(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]);
        (out == "Running").then_some(())
    });
    let cluster_ip = s.kube_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);

    // By name (the search path completes it), through the cluster DNS address.
    // busybox-static's wget crashes in a container (static glibc without NSS files), so
    // HTTP is spoken with nc; names go through busybox's resolver with the pod's search path.
    let by_name = "$(nslookup web 2>/dev/null | awk '/^Address: /{print $2}' | tail -n 1)";
    let page = wait_for("the service by name", Duration::from_secs(30), || {
        let (ok, out) = http_get(&s, by_name, 80);
        ok.then_some(out)
    });
    assert!(page.starts_with("hello from web-"), "{page}");
    let (ok, out) = exec(&s, "client", &["nslookup", "web.default.svc.cluster.local"]);
    assert!(ok && out.contains(&cluster_ip), "{out}");
    let (ok, out) = exec(
        &s,
        "client",
        &["nslookup", "kube-dns.kube-system.svc.cluster.local"],
    );
    assert!(ok && out.contains("10.43.0.10"), "{out}");
    let (ok, out) = exec(
        &s,
        "client",
        &["nslookup", "nope.default.svc.cluster.local"],
    );
    assert!(!ok && out.contains("NXDOMAIN"), "{out}");
    // A name the host knows from /etc/hosts.
    let (ok, out) = exec(&s, "client", &["nslookup", "localhost."]);
    assert!(ok && out.contains("127.0.0.1"), "{out}");

    // Both endpoints serve through the cluster IP (equal-probability choice).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (ok, out) = http_get(&s, &cluster_ip, 80);
        assert!(ok, "{out}");
        seen.insert(out.trim().to_string());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // sessionAffinity ClientIP: one client keeps its endpoint.
    let sticky_ip = s.kube_ok(&["get", "svc", "sticky", "-o", "jsonpath={.spec.clusterIP}"]);
    let mut pages = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let (ok, out) = http_get(&s, &sticky_ip, 80);
        assert!(ok, "{out}");
        pages.insert(out.trim().to_string());
    }
    assert_eq!(pages.len(), 1, "{pages:?}");
    // Hairpin: an endpoint reaching its own service (half the time itself) always works.
    let web_pod = s.kube_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    for _ in 0..6 {
        let (ok, out) = http_get_from(&s, &web_pod, &cluster_ip, 80);
        assert!(ok, "hairpin: {out}");
    }

    // Someone flushes krab's table: it is programmed again.
    let mut flush = Command::new("nft");
    flush.args(["flush", "table", "ip", "krab"]);
    assert!(run_bounded(flush, Duration::from_secs(10)).status.success());
    wait_for("the rules to come back", Duration::from_secs(30), || {
        let (ok, _) = http_get(&s, &cluster_ip, 80);
        ok.then_some(())
    });

    // NetworkPolicy: denying ingress to the web pods blocks the client; allowing its
    // namespace restores it.
    let deny = write(
        dir.path(),
        "deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-web}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
    );
    s.kube_ok(&["apply", "-f", &deny]);
    let blocked = wait_for("the policy to block", Duration::from_secs(30), || {
        let (ok, out) = http_get(&s, &cluster_ip, 80);
        (!ok).then_some(out)
    });
    assert!(!blocked.contains("HTTP/1."), "{blocked}");
    s.kube_ok(&["label", "namespace", "default", "team=a"]);
    let allow = write(
        dir.path(),
        "allow.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-team-a}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: a}}}]\n",
    );
    s.kube_ok(&["apply", "-f", &allow]);
    wait_for("the policy to allow", Duration::from_secs(30), || {
        let (ok, _) = http_get(&s, &cluster_ip, 80);
        ok.then_some(())
    });
    s.kube_ok(&["delete", "networkpolicy", "deny-web", "allow-team-a"]);

    // The node port, from the host.
    let mut curl = Command::new("curl");
    curl.args([
        "-sf",
        "--max-time",
        "5",
        &format!("http://{ip}:{node_port}/"),
    ]);
    let out = run_bounded(curl, Duration::from_secs(10));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("hello from web-"),
        "{out:?}"
    );

    // The rules as nftables lists them.
    let table = nft_table().expect("the krab table");
    let elements = table["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("map"))
        .find(|m| m["name"] == "service-ips")
        .map(|m| m["elem"].to_string())
        .unwrap_or_default();
    assert!(elements.contains(&cluster_ip), "{elements}");
    let lb = chain_rules(&table, "lb/default/web/tcp/80");
    assert_eq!(lb.len(), 2, "{lb:?}");
    assert!(lb[0].to_string().contains("numgen"), "{:?}", lb[0]);
    let svc = chain_rules(&table, "svc/default/web");
    assert!(
        svc.iter()
            .any(|r| r.to_string().contains("lb/default/web/tcp/80")),
        "{svc:?}"
    );

    // No endpoints: refused at once, not left to time out.
    s.kube_ok(&["scale", "deployment/web", "--replicas=0"]);
    wait_for("the endpoints to go", Duration::from_secs(60), || {
        let t = nft_table()?;
        chain_rules(&t, "lb/default/web/tcp/80")
            .is_empty()
            .then_some(())
    });
    let (ok, out) = http_get(&s, &cluster_ip, 80);
    // "Connection refused" (an ICMP reject), not the client's own timeout.
    assert!(!ok && out.contains("refused"), "{out}");

    s.stop();
    // The rules stay when the agent stops (pods keep working); cleanup removes them.
    assert!(nft_table().is_some());
    let mut cleanup = Command::new(env!("CARGO_BIN_EXE_krab"));
    cleanup.args(["agent", "--cleanup"]);
    let out = run_bounded(cleanup, Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    assert!(nft_table().is_none());
}
