//! What a failed pod means for its Job: the podFailurePolicy's first matching rule
//! (exit codes of its containers, or its conditions) decides whether the Job fails at once,
//! the failure is ignored, counted against backoffLimit, or fails the pod's index; and how
//! long to wait before a replacement (10 s doubling to 6 min).
use std::time::Duration;

use k8s_openapi::api::batch::v1::PodFailurePolicy;
use k8s_openapi::api::core::v1::Pod;

/// What one pod failure does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureAction {
    /// The Job fails now, with this message.
    FailJob(String),
    /// Not counted against the backoff limit.
    Ignore,
    /// Counted against the backoff limit (the default).
    Count,
    /// The pod's index fails (Indexed Jobs with backoffLimitPerIndex).
    FailIndex,
}

/// The exit codes of the pod's terminated containers (init containers first), by name.
fn exit_codes(pod: &Pod) -> Vec<(String, i32)> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            Some((c.name.clone(), t.exit_code))
        })
        .collect()
}

/// The first rule of the policy that matches the failed pod decides; without one, the
/// failure counts.
pub fn evaluate(policy: Option<&PodFailurePolicy>, pod: &Pod) -> FailureAction {
    let Some(policy) = policy else {
        return FailureAction::Count;
    };
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    for (i, rule) in policy.rules.iter().enumerate() {
        let mut matched: Option<String> = None;
        if let Some(on) = &rule.on_exit_codes {
            for (container, code) in exit_codes(pod) {
                if on.container_name.as_deref().is_some_and(|c| c != container) {
                    continue;
                }
                let listed = on.values.contains(&code);
                let hit = match on.operator.as_str() {
                    "In" => listed,
                    "NotIn" => !listed && code != 0,
                    _ => false,
                };
                if hit {
                    matched = Some(format!(
                        "Container {container} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {i}",
                        rule.action
                    ));
                    break;
                }
            }
        }
        for c in rule.on_pod_conditions.iter().flatten() {
            if matched.is_some() {
                break;
            }
            // The API defaults the status to True.
            let want = if c.status.is_empty() {
                "True"
            } else {
                c.status.as_str()
            };
            let has = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|pc| pc.type_ == c.type_ && pc.status == want));
            if has {
                matched = Some(format!(
                    "Pod {ns}/{name} has condition {} matching {} rule at index {i}",
                    c.type_, rule.action
                ));
            }
        }
        if let Some(message) = matched {
            return match rule.action.as_str() {
                "FailJob" => FailureAction::FailJob(message),
                "Ignore" => FailureAction::Ignore,
                "FailIndex" => FailureAction::FailIndex,
                _ => FailureAction::Count,
            };
        }
    }
    FailureAction::Count
}

/// The wait before the next pod after `failures` counted failures: 10 s, doubling, at most
/// 6 minutes (kube's job backoff).
pub fn backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let exp = (failures - 1).min(6) as u32;
    Duration::from_secs((10u64 << exp).min(360))
}

/// When the pod finished: its containers' latest finish time.
pub fn finished_at(pod: &Pod) -> Option<k8s_openapi::jiff::Timestamp> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: i32, conditions: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": "Failed", "conditions": conditions,
                "containerStatuses": [{"name": "main", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code}}}]}
        }))
        .unwrap()
    }

    fn policy(rules: serde_json::Value) -> PodFailurePolicy {
        serde_json::from_value(serde_json::json!({"rules": rules})).unwrap()
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let p = policy(serde_json::json!([
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1]}}
        ]));
        assert_eq!(
            evaluate(Some(&p), &failed(42, serde_json::json!([]))),
            FailureAction::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1".into()
            )
        );
        assert_eq!(
            evaluate(
                Some(&p),
                &failed(
                    42,
                    serde_json::json!([{"type": "DisruptionTarget", "status": "True"}])
                )
            ),
            FailureAction::Ignore
        );
        assert_eq!(
            evaluate(Some(&p), &failed(1, serde_json::json!([]))),
            FailureAction::Count
        );
        assert_eq!(
            evaluate(None, &failed(42, serde_json::json!([]))),
            FailureAction::Count
        );
    }

    #[test]
    fn backoff_doubles_up_to_six_minutes() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(20), Duration::from_secs(360));
    }
}
