//! HorizontalPodAutoscaler (autoscaling/v2), as kube's controller runs it every 15 s: the
//! target's replicas are read and written through its `scale` subresource; a count outside
//! minReplicas..maxReplicas is brought inside at once; otherwise Resource metrics (cpu,
//! memory) are read from the resource metrics API (`metrics.k8s.io`) and the replicas set
//! to `ceil(current * usage / target)` outside a 10% tolerance. The API server serves that
//! API from the kubelets' statistics; when it has no usage for the pods (no kubelet reports
//! them yet) the autoscaler says so in kube's words (ScalingActive False,
//! FailedGetResourceMetric) and leaves the replicas alone. Pods, Object and External
//! metrics need custom or external metrics APIs, which krab does not serve.
mod behavior;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricSpec,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use self::behavior::{Behavior, Held, History};
use super::{retry_after, Context, Error};
use crate::client::events::reference;
use crate::resources::quantity::milli;

/// kube's `--horizontal-pod-autoscaler-sync-period`.
const SYNC: Duration = Duration::from_secs(15);
/// kube's `--horizontal-pod-autoscaler-tolerance`.
const TOLERANCE: f64 = 0.1;

/// Each autoscaler's recent recommendations and scale changes, by uid (kube's controller
/// keeps them in memory too; a new leader starts without them).
type Memory = Arc<Mutex<HashMap<String, History>>>;

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let memory = Memory::default();
    Controller::new(
        Api::<HorizontalPodAutoscaler>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(
        move |hpa, ctx| reconcile(hpa, ctx, memory.clone()),
        error_policy,
        ctx,
    )
    .for_each(crate::controllers::observe(health.clone()))
    .await;
}

fn error_policy(hpa: Arc<HorizontalPodAutoscaler>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(autoscaler = %hpa.name_any(), namespace = ?hpa.namespace(), error = %e, "autoscaler sync failed");
    Action::requeue(retry_after(e).max(SYNC))
}

fn set_condition(
    status: &mut HorizontalPodAutoscalerStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let value = if value { "True" } else { "False" };
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != value {
            c.last_transition_time = Some(Time(Timestamp::now()));
        }
        c.status = value.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        return;
    }
    conditions.push(HorizontalPodAutoscalerCondition {
        type_: type_.into(),
        status: value.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(Time(Timestamp::now())),
    });
}

/// The replicas a metric asks for, or why it cannot be read: (reason, message).
type Proposal = Result<i32, (String, String)>;

/// What a utilization (or average value) ratio asks of `current` replicas: unchanged within
/// the tolerance, else rounded up.
pub fn replicas_for(current: i32, usage: f64, target: f64) -> i32 {
    if target <= 0.0 {
        return current;
    }
    let ratio = usage / target;
    if (ratio - 1.0).abs() <= TOLERANCE {
        return current;
    }
    (ratio * f64::from(current)).ceil() as i32
}

/// One Resource metric: its usage over the selected pods from the metrics API, against
/// their requests (averageUtilization) or per pod (averageValue).
async fn resource_proposal(
    ctx: &Context,
    ns: &str,
    selector: &str,
    current: i32,
    metric: &MetricSpec,
) -> Proposal {
    let Some(resource) = metric.resource.as_ref() else {
        return Err(("InvalidMetricSourceType".into(), "the HPA was unable to compute the replica count: invalid resource metric source: neither a utilization target nor a value target was set".into()));
    };
    let name = resource.name.clone();
    let fail = |e: String| {
        (
            "FailedGetResourceMetric".to_string(),
            format!("the HPA was unable to compute the replica count: failed to get {name} utilization: unable to get metrics for resource {name}: {e}"),
        )
    };
    let path = format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector={}",
        url_escape(selector)
    );
    let req = axum::http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| fail(e.to_string()))?;
    let metrics: Value = match ctx.client.request(req).await {
        Ok(v) => v,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Err(fail("unable to fetch metrics from resource metrics API: the server could not find the requested resource (get pods.metrics.k8s.io)".into()));
        }
        Err(e) => {
            return Err(fail(format!(
                "unable to fetch metrics from resource metrics API: {}",
                super::said(&e)
            )))
        }
    };
    let mut usage: BTreeMap<String, i128> = BTreeMap::new();
    for item in metrics["items"].as_array().into_iter().flatten() {
        let pod = item["metadata"]["name"].as_str().unwrap_or_default();
        let sum = item["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["usage"][&name].as_str())
            .map(|q| {
                milli(&k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    q.into(),
                ))
            })
            .sum();
        usage.insert(pod.to_string(), sum);
    }
    if usage.is_empty() {
        return Err(fail("no metrics returned from resource metrics API".into()));
    }
    let total: i128 = usage.values().sum();
    let target = &resource.target;
    if let Some(pct) = target.average_utilization {
        let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut requested = 0i128;
        for p in pods
            .items
            .iter()
            .filter(|p| usage.contains_key(&p.name_any()))
        {
            for c in p.spec.iter().flat_map(|s| &s.containers) {
                let r = c
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get(&name));
                match r {
                    Some(q) => requested += milli(q),
                    None => {
                        return Err(fail(format!(
                            "missing request for {name} in container {} of Pod {}",
                            c.name,
                            p.name_any()
                        )))
                    }
                }
            }
        }
        if requested == 0 {
            return Err(fail(format!("no pods with a {name} request")));
        }
        let utilization = total as f64 * 100.0 / requested as f64;
        return Ok(replicas_for(current, utilization, f64::from(pct)));
    }
    if let Some(value) = target.average_value.as_ref() {
        let per_pod = total as f64 / usage.len() as f64;
        return Ok(replicas_for(current, per_pod, milli(value) as f64));
    }
    Err((
        "InvalidMetricSourceType".into(),
        "the HPA was unable to compute the replica count: invalid resource metric source: neither a utilization target nor a value target was set".into(),
    ))
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Each metric's proposal, the largest wins; metrics krab cannot read (Pods, Object,
/// External, ContainerResource need metrics APIs krab does not have) fail as kube's do
/// without those APIs.
async fn metrics_proposal(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
    ns: &str,
    selector: &str,
    current: i32,
) -> Result<i32, (String, String, String)> {
    let default_cpu = [MetricSpec {
        type_: "Resource".into(),
        resource: Some(k8s_openapi::api::autoscaling::v2::ResourceMetricSource {
            name: "cpu".into(),
            target: k8s_openapi::api::autoscaling::v2::MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(80),
                ..Default::default()
            },
        }),
        ..Default::default()
    }];
    let metrics = match hpa.spec.as_ref().and_then(|s| s.metrics.as_deref()) {
        Some(m) if !m.is_empty() => m,
        _ => &default_cpu[..],
    };
    let mut best: Option<i32> = None;
    let mut first_error = None;
    let mut invalid = 0;
    for m in metrics {
        let p = match m.type_.as_str() {
            "Resource" => resource_proposal(ctx, ns, selector, current, m).await,
            other => {
                let (reason, api) = match other {
                    "Pods" => ("FailedGetPodsMetric", "custom metrics API"),
                    "Object" => ("FailedGetObjectMetric", "custom metrics API"),
                    "External" => ("FailedGetExternalMetric", "external metrics API"),
                    _ => ("FailedGetContainerResourceMetric", "resource metrics API"),
                };
                Err((
                    reason.to_string(),
                    format!("the HPA was unable to compute the replica count: unable to fetch metrics from {api}: the server could not find the requested resource"),
                ))
            }
        };
        match p {
            Ok(r) => best = Some(best.map_or(r, |b| b.max(r))),
            Err(e) => {
                invalid += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    match (best, first_error) {
        (Some(r), None) => Ok(r),
        // Some metrics work: scale up on them, never down (kube's rule).
        (Some(r), Some(_)) if r >= current && invalid < metrics.len() => Ok(r),
        (_, Some((reason, message))) => Err((
            reason,
            message,
            format!(
                "invalid metrics ({invalid} invalid out of {})",
                metrics.len()
            ),
        )),
        (None, None) => Ok(current),
    }
}

#[tracing::instrument(skip_all, fields(kind = "HorizontalPodAutoscaler", namespace = ?hpa.namespace(), name = %hpa.name_any()))]
async fn reconcile(
    hpa: Arc<HorizontalPodAutoscaler>,
    ctx: Arc<Context>,
    memory: Memory,
) -> Result<Action, Error> {
    let ns = hpa.namespace().ok_or(Error::Missing("namespace"))?;
    let spec = hpa.spec.clone().ok_or(Error::Missing("spec"))?;
    let target = &spec.scale_target_ref;
    let regarding = reference(&*hpa);
    let mut status = hpa.status.clone().unwrap_or_default();
    status.observed_generation = hpa.metadata.generation;
    let original = status.clone();
    let (group, version) = target
        .api_version
        .as_deref()
        .and_then(|v| v.split_once('/'))
        .unwrap_or(("", target.api_version.as_deref().unwrap_or("v1")));
    let gvk = GroupVersionKind::gvk(group, version, &target.kind);
    let scale = match kube::discovery::oneshot::pinned_kind(&ctx.client, &gvk).await {
        Ok((ar, _)) => {
            let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
            api.get_scale(&target.name).await.map(|s| (api, s))
        }
        Err(e) => Err(e),
    };
    let (api, scale) = match scale {
        Ok(s) => s,
        Err(e) => {
            let message = format!(
                "the HPA controller was unable to get the target's current scale: {}",
                super::said(&e)
            );
            set_condition(
                &mut status,
                "AbleToScale",
                false,
                "FailedGetScale",
                &message,
            );
            ctx.events
                .warning(&regarding, "FailedGetScale", &super::said(&e))
                .await;
            write_status(&ctx, &hpa, &ns, &original, status).await?;
            return Ok(Action::requeue(SYNC));
        }
    };
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    status.current_replicas = scale.status.as_ref().map(|s| s.replicas);
    let selector = scale
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    set_condition(
        &mut status,
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
    );
    let (desired, reason) = if current == 0 && min != 0 {
        set_condition(
            &mut status,
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
        );
        (0, None)
    } else if current > max {
        (
            max,
            Some("Current number of replicas above Spec.MaxReplicas".to_string()),
        )
    } else if current < min {
        (
            min,
            Some("Current number of replicas below Spec.MinReplicas".to_string()),
        )
    } else {
        match metrics_proposal(&ctx, &hpa, &ns, &selector, current).await {
            Ok(proposed) => {
                set_condition(
                    &mut status,
                    "ScalingActive",
                    true,
                    "ValidMetricFound",
                    "the HPA was able to successfully calculate a replica count from resource metrics",
                );
                let bounded = normalize(&memory, &hpa, &mut status, current, proposed, min, max);
                let why = if bounded > current {
                    Some("resource metric above target".to_string())
                } else {
                    (bounded != current).then(|| "All metrics below target".to_string())
                };
                (bounded, why)
            }
            Err((reason, message, count)) => {
                set_condition(&mut status, "ScalingActive", false, &reason, &message);
                ctx.events.warning(&regarding, &reason, &message).await;
                let first = message
                    .strip_prefix("the HPA was unable to compute the replica count: ")
                    .unwrap_or(&message);
                ctx.events
                    .warning(
                        &regarding,
                        "FailedComputeMetricsReplicas",
                        &format!("{count}, first error is: {first}"),
                    )
                    .await;
                status.desired_replicas = current;
                write_status(&ctx, &hpa, &ns, &original, status).await?;
                return Ok(Action::requeue(SYNC));
            }
        }
    };
    status.desired_replicas = desired;
    if desired != current {
        let patch = json!({"spec": {"replicas": desired}});
        match api
            .patch_scale(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                if let Ok(mut m) = memory.lock() {
                    m.entry(uid_of(&hpa))
                        .or_default()
                        .scaled(Instant::now(), current, desired);
                }
                let reason = reason.unwrap_or_default();
                ctx.events
                    .normal(
                        &regarding,
                        "SuccessfulRescale",
                        &format!("New size: {desired}; reason: {reason}"),
                    )
                    .await;
                set_condition(
                    &mut status,
                    "AbleToScale",
                    true,
                    "SucceededRescale",
                    &format!("the HPA controller was able to update the target scale to {desired}"),
                );
                status.last_scale_time = Some(Time(Timestamp::now()));
            }
            Err(e) => {
                set_condition(
                    &mut status,
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    &format!(
                        "the HPA controller was unable to update the target scale: {}",
                        super::said(&e)
                    ),
                );
                ctx.events
                    .warning(
                        &regarding,
                        "FailedRescale",
                        &format!("New size: {desired}; error: {}", super::said(&e)),
                    )
                    .await;
            }
        }
    }
    write_status(&ctx, &hpa, &ns, &original, status).await?;
    Ok(Action::requeue(SYNC))
}

fn uid_of(hpa: &HorizontalPodAutoscaler) -> String {
    hpa.metadata.uid.clone().unwrap_or_else(|| hpa.name_any())
}

/// kube's normalization of a metrics proposal: stabilized over its window, held to the
/// rate policies and to min..max, with the AbleToScale and ScalingLimited conditions that
/// say which applied.
fn normalize(
    memory: &Memory,
    hpa: &HorizontalPodAutoscaler,
    status: &mut HorizontalPodAutoscalerStatus,
    current: i32,
    proposed: i32,
    min: i32,
    max: i32,
) -> i32 {
    let behavior = Behavior::from_spec(hpa.spec.as_ref().and_then(|s| s.behavior.as_ref()));
    let now = Instant::now();
    let Ok(mut m) = memory.lock() else {
        return proposed.clamp(min, max);
    };
    let history = m.entry(uid_of(hpa)).or_default();
    let stabilized = history.stabilize(&behavior, now, current, proposed);
    if stabilized > proposed {
        set_condition(status, "AbleToScale", true, "ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation");
    } else if stabilized < proposed {
        set_condition(status, "AbleToScale", true, "ScaleUpStabilized", "recent recommendations were lower than current one, applying the lowest recent recommendation");
    } else {
        set_condition(
            status,
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size",
        );
    }
    let (desired, held) = history.limit(&behavior, now, current, stabilized, min, max);
    let (limited, reason, message) = match held {
        Held::UpLimit => (
            true,
            "ScaleUpLimit",
            "the desired replica count is increasing faster than the maximum scale rate",
        ),
        Held::DownLimit => (
            true,
            "ScaleDownLimit",
            "the desired replica count is decreasing faster than the maximum scale rate",
        ),
        _ if desired < stabilized => (
            true,
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count",
        ),
        _ if desired > stabilized => (
            true,
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count",
        ),
        _ => (
            false,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        ),
    };
    set_condition(status, "ScalingLimited", limited, reason, message);
    desired
}

async fn write_status(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
    ns: &str,
    original: &HorizontalPodAutoscalerStatus,
    status: HorizontalPodAutoscalerStatus,
) -> Result<(), Error> {
    if &status == original && hpa.status.is_some() {
        return Ok(());
    }
    let mut updated = hpa.clone();
    updated.status = Some(status);
    Api::<HorizontalPodAutoscaler>::namespaced(ctx.client.clone(), ns)
        .replace_status(&hpa.name_any(), &PostParams::default(), &updated)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_follow_the_ratio_outside_the_tolerance() {
        assert_eq!(replicas_for(3, 85.0, 80.0), 3);
        assert_eq!(replicas_for(3, 160.0, 80.0), 6);
        assert_eq!(replicas_for(4, 20.0, 80.0), 1);
        assert_eq!(replicas_for(2, 100.0, 80.0), 3);
    }
}
