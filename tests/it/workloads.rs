//! The workload controllers beyond Deployments, in `krab server --disable-agent`: nodes are
//! registered and pods marked running, ready or finished by the test itself, as kubelets
//! would report them through the same API. DaemonSets: a pod per eligible node, pinned there,
//! following nodes and taints, rolling updates within maxUnavailable, `kubectl rollout
//! status/history/undo`.
use std::time::Duration;

use crate::support::{wait_for, write, Server};

fn node_yaml(name: &str, labels: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}{labels}}}\n")
}

const NODE_STATUS: &str = r#"{"status":{"allocatable":{"cpu":"2","memory":"4Gi","pods":"110"},"capacity":{"cpu":"2","memory":"4Gi","pods":"110"},"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"ready"}]}}"#;

pub fn register_node(s: &Server, dir: &std::path::Path, name: &str, labels: &str) {
    let f = write(dir, &format!("{name}.yaml"), &node_yaml(name, labels));
    s.kube_ok(&["create", "-f", &f]);
    s.kube_ok(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        NODE_STATUS,
    ]);
}

/// What a kubelet would report for a running pod, ready or not.
pub fn report_running(s: &Server, pod: &str, ready: bool) {
    let r = if ready { "True" } else { "False" };
    let status = format!(
        r#"{{"status":{{"phase":"Running","conditions":[{{"type":"Ready","status":"{r}"}},{{"type":"ContainersReady","status":"{r}"}}]}}}}"#
    );
    s.kube_ok(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
}

/// `name → (node, image)` of the pods matching a label selector, not being deleted.
fn pods_of(s: &Server, selector: &str) -> Vec<(String, String, String)> {
    let out = s.kube_ok(&["get", "pods", "-l", selector, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

const DAEMONSET: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      nodeSelector: {edge: 'true'}
      containers:
      - name: agent
        image: agent:1
";

#[test]
fn daemonsets_run_a_pod_per_eligible_node_and_roll_updates_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    for n in ["n1", "n2"] {
        register_node(&s, dir.path(), n, ", edge: 'true'");
    }
    register_node(&s, dir.path(), "n3", "");
    let f = write(dir.path(), "ds.yaml", DAEMONSET);
    s.kube_ok(&["apply", "-f", &f]);
    // One pod on each labelled node, bound there by the scheduler; none on n3.
    let pods = wait_for("a daemon pod on n1 and n2", Duration::from_secs(30), || {
        let mut p = pods_of(&s, "app=agent");
        p.sort_by(|a, b| a.1.cmp(&b.1));
        let nodes: Vec<&str> = p.iter().map(|x| x.1.as_str()).collect();
        (nodes == ["n1", "n2"]).then_some(p)
    });
    let pinned = s.kube_ok(&[
        "get",
        "pod",
        &pods[0].0,
        "-o",
        "jsonpath={.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].values[0]}",
    ]);
    assert_eq!(pinned, "n1");
    for (p, _, _) in &pods {
        report_running(&s, p, true);
    }
    let out = s.kube_ok(&["rollout", "status", "ds/agent", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let counts = s.kube_ok(&[
        "get",
        "ds",
        "agent",
        "-o",
        "jsonpath={.status.desiredNumberScheduled} {.status.currentNumberScheduled} {.status.numberReady} {.status.updatedNumberScheduled}",
    ]);
    assert_eq!(counts, "2 2 2 2");
    // What happened is in Events, as kubectl describe shows them.
    let events = s.kube_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=agent",
        "-o",
        "jsonpath={range .items[*]}{.source.component} {.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains(&format!(
            "daemonset-controller SuccessfulCreate: Created pod: {}",
            pods[0].0
        )),
        "{events}"
    );
    let scheduled = s.kube_ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={}", pods[0].0),
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        scheduled.contains(&format!(
            "Successfully assigned default/{} to n1",
            pods[0].0
        )),
        "{scheduled}"
    );

    // A new template: old pods give way one at a time (maxUnavailable 1).
    s.kube_ok(&["set", "image", "ds/agent", "agent=agent:2"]);
    let first = wait_for("one pod replaced", Duration::from_secs(30), || {
        let p = pods_of(&s, "app=agent");
        let new: Vec<_> = p.iter().filter(|x| x.2 == "agent:2").cloned().collect();
        (new.len() == 1).then_some((p, new))
    });
    // The other old pod stays while the new one is not ready.
    std::thread::sleep(Duration::from_secs(2));
    let p = pods_of(&s, "app=agent");
    assert_eq!(
        p.iter().filter(|x| x.2 == "agent:1").count(),
        1,
        "{p:?} {first:?}"
    );
    let new_pod = wait_for("the new pod bound", Duration::from_secs(30), || {
        pods_of(&s, "app=agent")
            .into_iter()
            .find(|x| x.2 == "agent:2" && !x.1.is_empty())
    });
    report_running(&s, &new_pod.0, true);
    let second = wait_for(
        "the second replaced and bound",
        Duration::from_secs(30),
        || {
            pods_of(&s, "app=agent")
                .into_iter()
                .find(|x| x.2 == "agent:2" && !x.1.is_empty() && x.0 != new_pod.0)
        },
    );
    report_running(&s, &second.0, true);
    s.kube_ok(&["rollout", "status", "ds/agent", "--timeout=30s"]);
    let history = s.kube_ok(&["rollout", "history", "ds/agent"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    s.kube_ok(&["rollout", "undo", "ds/agent"]);
    let image = wait_for("the template back", Duration::from_secs(30), || {
        let i = s.kube_ok(&[
            "get",
            "ds",
            "agent",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ]);
        (i == "agent:1").then_some(i)
    });
    assert_eq!(image, "agent:1");

    // A node tainted NoSchedule loses its daemon pod; a new eligible node gains one.
    s.kube_ok(&["taint", "node", "n2", "dedicated=db:NoSchedule"]);
    s.kube_ok(&["label", "node", "n3", "edge=true"]);
    wait_for("pods on n1 and n3 only", Duration::from_secs(30), || {
        let mut nodes: Vec<String> = pods_of(&s, "app=agent").into_iter().map(|x| x.1).collect();
        nodes.sort();
        nodes.dedup();
        (nodes == ["n1", "n3"]).then_some(())
    });
    // A finished daemon pod is replaced.
    let on_n1 = pods_of(&s, "app=agent")
        .into_iter()
        .find(|x| x.1 == "n1")
        .unwrap();
    s.kube_ok(&[
        "patch",
        "pod",
        &on_n1.0,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Failed"}}"#,
    ]);
    wait_for("a new pod on n1", Duration::from_secs(30), || {
        pods_of(&s, "app=agent")
            .into_iter()
            .any(|x| x.1 == "n1" && x.0 != on_n1.0)
            .then_some(())
    });
}

/// What a kubelet would report for a pod whose container exited with `code`.
fn report_exit(s: &Server, pod: &str, code: i32) {
    let phase = if code == 0 { "Succeeded" } else { "Failed" };
    let status = format!(
        r#"{{"status":{{"phase":"{phase}","containerStatuses":[{{"name":"work","image":"work:1","imageID":"","ready":false,"restartCount":0,"state":{{"terminated":{{"exitCode":{code},"finishedAt":"2026-01-01T00:00:00Z"}}}}}}]}}}}"#
    );
    s.kube_ok(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
}

fn job_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{spec}\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: work\n        image: work:1\n"
    )
}

/// The Job's pods that are still running (phase not terminal), by name.
fn running_pods(s: &Server, job: &str) -> Vec<String> {
    let out = s.kube_ok(&[
        "get",
        "pods",
        "-l",
        &format!("batch.kubernetes.io/job-name={job}"),
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null()
                && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        })
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

fn job_field(s: &Server, job: &str, path: &str) -> String {
    s.kube_ok(&["get", "job", job, "-o", &format!("jsonpath={path}")])
}

fn condition(s: &Server, job: &str, type_: &str) -> String {
    job_field(
        s,
        job,
        &format!("{{.status.conditions[?(@.type==\"{type_}\")].status}}/{{.status.conditions[?(@.type==\"{type_}\")].reason}}"),
    )
}

#[test]
fn jobs_run_to_completion_fail_by_their_limits_and_go_after_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    register_node(&s, dir.path(), "n1", "");

    // completions 3, parallelism 2: two at a time until three succeeded.
    let f = write(
        dir.path(),
        "j1.yaml",
        &job_yaml(
            "three",
            "  completions: 3\n  parallelism: 2\n  ttlSecondsAfterFinished: 2",
        ),
    );
    s.kube_ok(&["apply", "-f", &f]);
    let mut done = 0;
    while done < 3 {
        let pods = wait_for("running pods", Duration::from_secs(30), || {
            let p = running_pods(&s, "three");
            (!p.is_empty() && p.len() <= 2).then_some(p)
        });
        let fin = s.kube_ok(&[
            "get",
            "pod",
            &pods[0],
            "-o",
            "jsonpath={.metadata.finalizers}",
        ]);
        assert!(fin.contains("batch.kubernetes.io/job-tracking"), "{fin}");
        report_exit(&s, &pods[0], 0);
        done += 1;
        wait_for("the success counted", Duration::from_secs(30), || {
            (job_field(&s, "three", "{.status.succeeded}") == done.to_string()).then_some(())
        });
    }
    let out = s.kube_ok(&[
        "wait",
        "--for=condition=complete",
        "job/three",
        "--timeout=30s",
    ]);
    assert!(out.contains("condition met"), "{out}");
    assert_eq!(
        condition(&s, "three", "SuccessCriteriaMet"),
        "True/CompletionsReached"
    );
    let events = s.kube_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=Job,involvedObject.name=three",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(
        events.contains("SuccessfulCreate") && events.contains("Completed"),
        "{events}"
    );
    // Counted pods are released (no finalizer) and the Job goes after its TTL.
    wait_for(
        "the job deleted after its TTL",
        Duration::from_secs(30),
        || {
            let out = s.kubectl(&["get", "job", "three"]);
            (!out.status.success()).then_some(())
        },
    );

    // backoffLimit 0: the first failure fails the Job.
    let f = write(
        dir.path(),
        "j2.yaml",
        &job_yaml("fragile", "  backoffLimit: 0"),
    );
    s.kube_ok(&["apply", "-f", &f]);
    let pod = wait_for("a pod", Duration::from_secs(30), || {
        running_pods(&s, "fragile").pop()
    });
    report_exit(&s, &pod, 1);
    wait_for("the job failed", Duration::from_secs(30), || {
        (condition(&s, "fragile", "Failed") == "True/BackoffLimitExceeded").then_some(())
    });
    assert_eq!(job_field(&s, "fragile", "{.status.failed}"), "1");

    // A podFailurePolicy rule fails the Job at once on exit code 42.
    let f = write(
        dir.path(),
        "j3.yaml",
        &job_yaml(
            "policy",
            "  backoffLimit: 6\n  podFailurePolicy:\n    rules:\n    - action: FailJob\n      onExitCodes: {containerName: work, operator: In, values: [42]}",
        ),
    );
    s.kube_ok(&["apply", "-f", &f]);
    let pod = wait_for("a pod", Duration::from_secs(30), || {
        running_pods(&s, "policy").pop()
    });
    report_exit(&s, &pod, 42);
    wait_for("the job failed by policy", Duration::from_secs(30), || {
        (condition(&s, "policy", "Failed") == "True/PodFailurePolicy").then_some(())
    });

    // Indexed: one pod per index, each knowing it; completedIndexes as runs.
    let f = write(
        dir.path(),
        "j4.yaml",
        &job_yaml(
            "indexed",
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed",
        ),
    );
    s.kube_ok(&["apply", "-f", &f]);
    let pods = wait_for("three indexed pods", Duration::from_secs(30), || {
        let p = running_pods(&s, "indexed");
        (p.len() == 3).then_some(p)
    });
    let mut by_index = std::collections::BTreeMap::new();
    for p in &pods {
        let idx = s.kube_ok(&[
            "get",
            "pod",
            p,
            "-o",
            "jsonpath={.metadata.annotations.batch\\.kubernetes\\.io/job-completion-index}",
        ]);
        let host = s.kube_ok(&["get", "pod", p, "-o", "jsonpath={.spec.hostname}"]);
        assert_eq!(host, format!("indexed-{idx}"));
        by_index.insert(idx, p.clone());
    }
    assert_eq!(
        by_index.keys().cloned().collect::<Vec<_>>(),
        ["0", "1", "2"]
    );
    for i in ["0", "2"] {
        report_exit(&s, &by_index[i], 0);
    }
    wait_for("indexes 0 and 2 completed", Duration::from_secs(30), || {
        (job_field(&s, "indexed", "{.status.completedIndexes}") == "0,2").then_some(())
    });
    report_exit(&s, &by_index["1"], 0);
    wait_for("all indexes completed", Duration::from_secs(30), || {
        (job_field(&s, "indexed", "{.status.completedIndexes}") == "0-2").then_some(())
    });
    s.kube_ok(&[
        "wait",
        "--for=condition=complete",
        "job/indexed",
        "--timeout=30s",
    ]);

    // Suspended: no pods until resumed.
    let f = write(dir.path(), "j5.yaml", &job_yaml("later", "  suspend: true"));
    s.kube_ok(&["apply", "-f", &f]);
    wait_for("suspended", Duration::from_secs(30), || {
        (condition(&s, "later", "Suspended") == "True/JobSuspended").then_some(())
    });
    assert!(running_pods(&s, "later").is_empty());
    s.kube_ok(&[
        "patch",
        "job",
        "later",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    wait_for("a pod once resumed", Duration::from_secs(30), || {
        running_pods(&s, "later").pop()
    });
    assert_eq!(condition(&s, "later", "Suspended"), "False/JobResumed");

    // activeDeadlineSeconds: running too long fails the Job and stops its pods.
    let f = write(
        dir.path(),
        "j6.yaml",
        &job_yaml("slow", "  activeDeadlineSeconds: 2"),
    );
    s.kube_ok(&["apply", "-f", &f]);
    wait_for("the deadline", Duration::from_secs(30), || {
        (condition(&s, "slow", "Failed") == "True/DeadlineExceeded").then_some(())
    });
    wait_for("its pods stopped", Duration::from_secs(30), || {
        running_pods(&s, "slow").is_empty().then_some(())
    });
}

#[test]
fn cronjobs_start_jobs_on_schedule_and_keep_their_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    register_node(&s, dir.path(), "n1", "");
    // The schedule and the zone are validated as kube-apiserver does.
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: bad}\nspec:\n  schedule: '61 * * * *'\n  timeZone: Mars/Olympus\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: work, image: work:1}]\n",
    );
    let err = s.kube_err(&["create", "-f", &bad]);
    assert!(
        err.contains("spec.schedule: Invalid value: \"61 * * * *\""),
        "{err}"
    );
    assert!(
        err.contains("spec.timeZone: Invalid value: \"Mars/Olympus\""),
        "{err}"
    );

    let f = write(
        dir.path(),
        "cj.yaml",
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: tick}\nspec:\n  schedule: '* * * * *'\n  timeZone: Europe/Berlin\n  successfulJobsHistoryLimit: 0\n  jobTemplate:\n    metadata:\n      labels: {from: tick}\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: work, image: work:1}]\n",
    );
    s.kube_ok(&["apply", "-f", &f]);
    // The next minute starts a Job named for its minute, listed as active.
    let job = wait_for("the first scheduled job", Duration::from_secs(75), || {
        let out = s.kube_ok(&[
            "get",
            "jobs",
            "-l",
            "from=tick",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        (!out.is_empty()).then_some(out)
    });
    let minutes: i64 = job.strip_prefix("tick-").unwrap().parse().unwrap();
    let scheduled = s.kube_ok(&[
        "get",
        "job",
        &job,
        "-o",
        "jsonpath={.metadata.annotations.batch\\.kubernetes\\.io/cronjob-scheduled-timestamp}",
    ]);
    assert!(scheduled.ends_with(":00+01:00"), "{scheduled}");
    let owner = s.kube_ok(&[
        "get",
        "job",
        &job,
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(owner, "CronJob");
    wait_for("the job listed as active", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "cronjob",
            "tick",
            "-o",
            "jsonpath={.status.active[*].name}",
        ]);
        (out == job).then_some(())
    });
    let last = s.kube_ok(&[
        "get",
        "cronjob",
        "tick",
        "-o",
        "jsonpath={.status.lastScheduleTime}",
    ]);
    let last: k8s_openapi::jiff::Timestamp = last.parse().unwrap();
    assert_eq!(last.as_second() / 60, minutes);
    // Its pod succeeds: the Job completes, is the last success, and (history limit 0) goes.
    let pod = wait_for("the job's pod", Duration::from_secs(30), || {
        running_pods(&s, &job).pop()
    });
    report_exit(&s, &pod, 0);
    wait_for("the last success recorded", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "cronjob",
            "tick",
            "-o",
            "jsonpath={.status.lastSuccessfulTime}",
        ]);
        (!out.is_empty()).then_some(())
    });
    wait_for("the finished job deleted", Duration::from_secs(30), || {
        (!s.kubectl(&["get", "job", &job]).status.success()).then_some(())
    });
}

/// The pods' names, each with its deletion mark and revision, of the StatefulSet `db`.
fn members(s: &Server) -> Vec<(String, bool, String)> {
    let out = s.kube_ok(&["get", "pods", "-l", "app=db", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut m: Vec<(String, bool, String)> = v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                !p["metadata"]["deletionTimestamp"].is_null(),
                p["metadata"]["labels"]["controller-revision-hash"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    m.sort();
    m
}

/// What a kubelet does once a deleted pod's containers stopped: the pod goes.
fn finish_deletion(s: &Server, pod: &str) {
    wait_for(
        "the pod marked for deletion",
        Duration::from_secs(30),
        || {
            members(s)
                .iter()
                .any(|(n, deleting, _)| n == pod && *deleting)
                .then_some(())
        },
    );
    s.kube_ok(&["delete", "pod", pod, "--grace-period=0", "--force"]);
}

const STATEFULSET: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  replicas: 3
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
      - name: db
        image: db:1
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
";

#[test]
fn statefulsets_start_in_order_keep_identities_and_update_from_the_top() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    register_node(&s, dir.path(), "n1", "");
    let f = write(dir.path(), "sts.yaml", STATEFULSET);
    s.kube_ok(&["apply", "-f", &f]);
    // OrderedReady: each member waits for the one before it to be Running and Ready.
    for n in 0..3 {
        let pod = format!("db-{n}");
        wait_for("the next member", Duration::from_secs(30), || {
            let m = members(&s);
            (m.len() == n + 1 && m[n].0 == pod).then_some(())
        });
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            members(&s).len(),
            n + 1,
            "a member came before its predecessor was ready"
        );
        let claim = s.kube_ok(&[
            "get",
            "pvc",
            &format!("data-db-{n}"),
            "-o",
            "jsonpath={.metadata.name}",
        ]);
        assert_eq!(claim, format!("data-db-{n}"));
        report_running(&s, &pod, true);
        let ip = format!(
            r#"{{"status":{{"podIP":"10.42.0.{}","podIPs":[{{"ip":"10.42.0.{}"}}]}}}}"#,
            10 + n,
            10 + n
        );
        s.kube_ok(&[
            "patch",
            "pod",
            &pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &ip,
        ]);
    }
    let identity = s.kube_ok(&[
        "get",
        "pod",
        "db-1",
        "-o",
        "jsonpath={.spec.hostname}.{.spec.subdomain} {.spec.volumes[?(@.name==\"data\")].persistentVolumeClaim.claimName}",
    ]);
    assert_eq!(identity, "db-1.db data-db-1");
    // The headless Service names each member: endpoints carry their hostnames (cluster DNS
    // answers `db-1.db.<ns>.svc` from them).
    let svc = write(
        dir.path(),
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  clusterIP: None\n  selector: {app: db}\n  ports: [{port: 5432}]\n",
    );
    s.kube_ok(&["apply", "-f", &svc]);
    wait_for("hostnames in the slice", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=db",
            "-o",
            "jsonpath={.items[0].endpoints[*].hostname}",
        ]);
        (out == "db-0 db-1 db-2").then_some(())
    });
    s.kube_ok(&["rollout", "status", "sts/db", "--timeout=30s"]);

    // A new template with partition 2: only ordinals from 2 up move (db-2).
    s.kube_ok(&[
        "patch",
        "sts",
        "db",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}}}}"#,
    ]);
    s.kube_ok(&["set", "image", "sts/db", "db=db:2"]);
    finish_deletion(&s, "db-2");
    let update = wait_for("db-2 at the new revision", Duration::from_secs(30), || {
        let rev = s.kube_ok(&[
            "get",
            "sts",
            "db",
            "-o",
            "jsonpath={.status.updateRevision}",
        ]);
        members(&s)
            .iter()
            .any(|(n, d, r)| n == "db-2" && !d && *r == rev)
            .then_some(rev)
    });
    report_running(&s, "db-2", true);
    let counts = || {
        s.kube_ok(&[
            "get",
            "sts",
            "db",
            "-o",
            "jsonpath={.status.readyReplicas} {.status.updatedReplicas} {.status.currentReplicas}",
        ])
    };
    let settled = (0..60).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        counts() == "3 1 2"
    });
    assert!(
        settled,
        "ready/updated/current: {} {:?}",
        counts(),
        members(&s)
    );
    let m = members(&s);
    assert!(m.iter().filter(|x| x.2 == update).count() == 1, "{m:?}");

    // Scaling down removes from the top, one at a time; the claims stay.
    s.kube_ok(&["scale", "sts/db", "--replicas=1"]);
    finish_deletion(&s, "db-2");
    finish_deletion(&s, "db-1");
    wait_for("one member left", Duration::from_secs(30), || {
        (members(&s).iter().map(|m| m.0.as_str()).collect::<Vec<_>>() == ["db-0"]).then_some(())
    });
    let claims = s.kube_ok(&["get", "pvc", "-o", "jsonpath={.items[*].metadata.name}"]);
    assert_eq!(claims, "data-db-0 data-db-1 data-db-2");
    // Scaling up brings db-1 back with its old claim.
    s.kube_ok(&["scale", "sts/db", "--replicas=2"]);
    wait_for("db-1 again", Duration::from_secs(30), || {
        members(&s)
            .iter()
            .any(|m| m.0 == "db-1" && !m.1)
            .then_some(())
    });
}

#[test]
fn a_silent_node_goes_unknown_is_tainted_and_its_pods_leave_by_their_tolerations() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    register_node(&s, dir.path(), "n1", "");
    // Its kubelet last renewed its Lease long ago.
    let lease = write(
        dir.path(),
        "lease.yaml",
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: n1, namespace: kube-node-lease}\nspec:\n  holderIdentity: n1\n  leaseDurationSeconds: 40\n  renewTime: '2020-01-01T00:00:00.000000Z'\n",
    );
    s.kube_ok(&["apply", "-f", &lease]);
    let pods = write(
        dir.path(),
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: brief}\nspec:\n  nodeName: n1\n  tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}]\n  containers: [{name: c, image: c:1}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: patient}\nspec:\n  nodeName: n1\n  containers: [{name: c, image: c:1}]\n",
    );
    s.kube_ok(&["apply", "-f", &pods]);
    for p in ["brief", "patient"] {
        report_running(&s, p, true);
    }
    // Judged once the controller has watched it for the whole 40 s grace period.
    wait_for("the node Unknown", Duration::from_secs(70), || {
        let out = s.kube_ok(&[
            "get",
            "node",
            "n1",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}/{.status.conditions[?(@.type==\"Ready\")].reason}",
        ]);
        (out == "Unknown/NodeStatusUnknown").then_some(())
    });
    let taints = wait_for("the unreachable taints", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "node",
            "n1",
            "-o",
            "jsonpath={.spec.taints[*].key}:{.spec.taints[*].effect}",
        ]);
        out.contains("node.kubernetes.io/unreachable")
            .then_some(out)
    });
    assert!(
        taints.contains("NoExecute") && taints.contains("NoSchedule"),
        "{taints}"
    );
    // Its pods stop being Ready; the one tolerating it for 2 s is evicted, the one with
    // the default 300 s stays.
    wait_for("pods not ready", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "pod",
            "patient",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (out == "False").then_some(())
    });
    wait_for("the brief pod evicted", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "pod",
            "brief",
            "-o",
            "jsonpath={.metadata.deletionTimestamp} {.status.conditions[?(@.type==\"DisruptionTarget\")].reason}",
        ]);
        (out.ends_with(" DeletionByTaintManager") && !out.starts_with(' ')).then_some(())
    });
    let patient = s.kube_ok(&[
        "get",
        "pod",
        "patient",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(patient.is_empty(), "{patient}");
    // The kubelet comes back: Ready again, the taints go.
    let now = k8s_openapi::jiff::Timestamp::now();
    s.kube_ok(&[
        "patch",
        "lease",
        "n1",
        "-n",
        "kube-node-lease",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"spec":{{"renewTime":"{}"}}}}"#,
            now.strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        ),
    ]);
    s.kube_ok(&[
        "patch",
        "node",
        "n1",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"{}"}}]}}}}"#, now.strftime("%Y-%m-%dT%H:%M:%SZ")),
    ]);
    wait_for("the taints gone", Duration::from_secs(30), || {
        let out = s.kube_ok(&["get", "node", "n1", "-o", "jsonpath={.spec.taints}"]);
        (!out.contains("unreachable")).then_some(())
    });
}

#[test]
fn replication_controllers_keep_their_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    register_node(&s, dir.path(), "n1", "");
    let rc = "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: old}\nspec:\n  replicas: 3\n  selector: {app: old}\n  template:\n    metadata: {labels: {app: old}}\n    spec: {containers: [{name: c, image: busybox}]}\n";
    s.kube_ok(&["apply", "-f", &write(dir.path(), "rc.yaml", rc)]);
    let pods = wait_for("three pods", Duration::from_secs(30), || {
        let p = pods_of(&s, "app=old");
        (p.len() == 3).then_some(p)
    });
    report_running(&s, &pods[0].0, true);
    wait_for("the RC's status", Duration::from_secs(30), || {
        let st = s.kube_ok(&[
            "get",
            "rc",
            "old",
            "-o",
            "jsonpath={.status.replicas}/{.status.readyReplicas}/{.status.observedGeneration}",
        ]);
        (st == "3/1/1").then_some(())
    });
    s.kube_ok(&["scale", "rc", "old", "--replicas=1"]);
    wait_for("one pod left", Duration::from_secs(30), || {
        (pods_of(&s, "app=old").len() == 1).then_some(())
    });
    // The ready pod is kept: unready ones go first.
    assert_eq!(pods_of(&s, "app=old")[0].0, pods[0].0);
}
