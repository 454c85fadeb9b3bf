//! A dual-stack node: pods get an IPv4 and an IPv6 address, a RequireDualStack Service a
//! cluster IP of each family and an EndpointSlice of each, the IPv6 cluster IP answers
//! through `ip6 krab`, NetworkPolicy holds over IPv6 (`ip6 krab-policy`), and cluster DNS
//! gives the Service's AAAA record.
use std::process::Command;
use std::time::Duration;

use crate::busybox_image::{write_busybox_image, BUSYBOX};
use crate::pods_support::{http_body, nc_get_script, PodNetwork};
use crate::support::{free_port, run_bounded, wait_for, write, Server};

fn host_ip() -> String {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("1.1.1.1:9").unwrap();
    s.local_addr().unwrap().ip().to_string()
}

#[test]
fn a_dual_stack_service_answers_on_its_ipv6_cluster_ip() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    let ip = host_ip();
    let dns_port = free_port().to_string();
    let s = Server::start_with_agent(
        &data,
        &[
            "--advertise-address",
            &ip,
            "--dns-port",
            &dns_port,
            "--cluster-cidr",
            "10.42.0.0/16,fd00:42::/56",
            "--service-cidr",
            "10.43.0.0/16,fd00:43::/112",
        ],
    );
    let manifests = write(
        dir.path(),
        "web.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {BUSYBOX}
    command: [sh, -c, 'echo "hello over both" > /var/www/index.html; exec httpd -f -p 8080 -h /var/www']
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
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
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  ipFamilyPolicy: RequireDualStack
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
        ),
    );
    s.kube_ok(&["apply", "-f", &manifests]);
    wait_for("both pods ready", Duration::from_secs(120), || {
        let out = s.kube_ok(&[
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ]);
        (out.lines().filter(|l| *l == "True").count() == 2).then_some(())
    });
    // An address of each family, IPv4 first.
    let ips = s.kube_ok(&["get", "pod", "web", "-o", "jsonpath={.status.podIPs[*].ip}"]);
    let ips: Vec<&str> = ips.split_whitespace().collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(
        ips[0].starts_with("10.42.") && ips[1].starts_with("fd00:42:"),
        "{ips:?}"
    );
    // A slice per family.
    let types = wait_for("both slices", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={range .items[*]}{.addressType}={.endpoints[*].addresses[0]}{\"\\n\"}{end}",
        ]);
        let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
        lines.sort();
        (lines.len() == 2 && lines.iter().all(|l| !l.ends_with('='))).then_some(lines)
    });
    assert_eq!(
        types,
        [format!("IPv4={}", ips[0]), format!("IPv6={}", ips[1])]
    );

    let cluster_ips = s.kube_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIPs[*]}"]);
    let cluster_ips: Vec<&str> = cluster_ips.split_whitespace().collect();
    assert_eq!(cluster_ips.len(), 2, "{cluster_ips:?}");
    let v6 = cluster_ips[1];
    assert!(v6.starts_with("fd00:43::"), "{v6}");
    let exec = |cmd: &[&str]| {
        let mut args = vec!["exec", "client", "--"];
        args.extend_from_slice(cmd);
        let out = s.kubectl(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // Both cluster IPs answer, the IPv6 one through ip6 krab.
    for addr in &cluster_ips {
        let page = wait_for("the service", Duration::from_secs(30), || {
            let (ok, out) = exec(&["sh", "-c", &nc_get_script(addr, 80)]);
            let (ok, body) = http_body(ok, out);
            ok.then_some(body)
        });
        assert_eq!(page.trim(), "hello over both", "{addr}");
    }
    // The AAAA record.
    let (ok, out) = exec(&["nslookup", "-type=aaaa", "web.default.svc.cluster.local"]);
    assert!(ok && out.contains(v6), "{out}");
    // The IPv6 table holds the address in its map.
    let mut cmd = Command::new("nft");
    cmd.args(["-j", "list", "map", "ip6", "krab", "service-ips"]);
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(v6));
    // NetworkPolicy holds over IPv6 too: denying ingress blocks both families.
    let deny = write(
        dir.path(),
        "deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-web}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
    );
    s.kube_ok(&["apply", "-f", &deny]);
    for addr in &cluster_ips {
        wait_for("the policy to block", Duration::from_secs(30), || {
            let (ok, out) = exec(&["sh", "-c", &nc_get_script(addr, 80)]);
            (!http_body(ok, out).0).then_some(())
        });
    }
    s.kube_ok(&["delete", "networkpolicy", "deny-web"]);
    wait_for("the policy to go", Duration::from_secs(30), || {
        let (ok, out) = exec(&["sh", "-c", &nc_get_script(v6, 80)]);
        http_body(ok, out).0.then_some(())
    });
    // With the pod gone, the IPv6 cluster IP refuses at once, as the IPv4 one does.
    s.kube_ok(&["delete", "pod", "web", "--wait=true"]);
    let out = wait_for("a refusal", Duration::from_secs(30), || {
        let (ok, out) = exec(&["sh", "-c", &nc_get_script(v6, 80)]);
        (!ok && out.contains("refused")).then_some(out)
    });
    assert!(out.contains("refused"), "{out}");
}
