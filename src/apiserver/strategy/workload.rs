//! Workloads (apps/v1, batch/v1 and the v1 ReplicationController): kube's defaults, the
//! selector rules (required, matching the template's labels, immutable) and the checks of
//! the pod template inside them.
use serde_json::{json, Map, Value};

use super::super::resources::Resource;
use super::super::validation::FieldErrors;
use super::{pod, set_default};

fn default_template(spec: &mut Map<String, Value>) {
    if let Some(t) = spec.get_mut("template").and_then(Value::as_object_mut) {
        if let Some(ps) = t.get_mut("spec").and_then(Value::as_object_mut) {
            pod::default_spec(ps);
        }
    }
}

/// apps/v1 and batch/v1 defaults.
pub fn default(r: &Resource, obj: &mut Value) {
    let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
    let name = obj
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null);
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    match r.plural {
        "deployments" => {
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(spec, "strategy", json!({"type": "RollingUpdate"}));
            if let Some(s) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                set_default(s, "type", json!("RollingUpdate"));
                if s.get("type") == Some(&json!("RollingUpdate")) {
                    set_default(s, "rollingUpdate", json!({}));
                    if let Some(ru) = s.get_mut("rollingUpdate").and_then(Value::as_object_mut) {
                        set_default(ru, "maxUnavailable", json!("25%"));
                        set_default(ru, "maxSurge", json!("25%"));
                    }
                }
            }
        }
        "replicasets" => set_default(spec, "replicas", json!(1)),
        "statefulsets" => {
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
        }
        "daemonsets" => {
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
        }
        "jobs" => default_job(spec, &uid, &name),
        "cronjobs" => {
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(js) = spec
                .get_mut("jobTemplate")
                .and_then(|t| t.get_mut("spec"))
                .and_then(Value::as_object_mut)
            {
                default_job_spec(js);
            }
            return;
        }
        _ => {}
    }
    default_template(spec);
}

fn default_job_spec(spec: &mut Map<String, Value>) {
    if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if spec.get("completionMode") == Some(&json!("Indexed")) {
        set_default(spec, "backoffLimitPerIndex", Value::Null);
    }
    default_template(spec);
}

/// A Job gets its own selector on the uid, and its template the matching labels, unless
/// the user chose `manualSelector`.
fn default_job(spec: &mut Map<String, Value>, uid: &Value, name: &Value) {
    default_job_spec(spec);
    if spec.get("manualSelector") == Some(&json!(true)) {
        return;
    }
    let labels = json!({
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    });
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    if let Some(t) = spec.get_mut("template").and_then(Value::as_object_mut) {
        let meta = t.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            let l = m.entry("labels").or_insert_with(|| json!({}));
            if let (Some(l), Some(add)) = (l.as_object_mut(), labels.as_object()) {
                for (k, v) in add {
                    l.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

/// The v1 ReplicationController: its selector and labels default to the template's labels.
pub fn default_rc(obj: &mut Value) {
    let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        set_default(spec, "replicas", json!(1));
        if let Some(l) = &template_labels {
            set_default(spec, "selector", l.clone());
        }
        default_template(spec);
    }
    if let Some(l) = template_labels {
        if obj.pointer("/metadata/labels").is_none() {
            obj["metadata"]["labels"] = l;
        }
    }
}

/// Whether a metav1.LabelSelector (matchLabels and matchExpressions) selects `labels`.
pub fn selector_matches(selector: &Value, labels: &Map<String, Value>) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    let ml_ok = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| get(k) == v.as_str());
    let me_ok = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e.get("operator").and_then(Value::as_str) {
                Some("In") => get(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => !get(key).is_some_and(|v| values.contains(&v)),
                Some("Exists") => get(key).is_some(),
                Some("DoesNotExist") => get(key).is_none(),
                _ => false,
            }
        });
    ml_ok && me_ok
}

fn selector_empty(sel: &Value) -> bool {
    sel.get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty)
        && sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
}

fn non_negative(spec: &Value, field: &str, at: &str, errs: &mut FieldErrors) {
    if let Some(v) = spec.get(field) {
        if v.as_i64().is_none_or(|n| n < 0) {
            errs.invalid(
                format!("{at}.{field}"),
                v,
                "must be greater than or equal to 0",
            );
        }
    }
}

/// Selector and template checks for apps/v1 and batch/v1 kinds.
pub fn validate(r: &Resource, obj: &Value, old: Option<&Value>, errs: &mut FieldErrors) {
    if r.plural == "controllerrevisions" {
        // No spec: the revision number and its data (kube requires only the revision to
        // be non-negative and the data to be immutable).
        if obj.get("revision").and_then(Value::as_i64).unwrap_or(0) < 0 {
            errs.invalid(
                "revision",
                obj.get("revision").unwrap_or(&Value::Null),
                "must be greater than or equal to 0",
            );
        }
        if let Some(old) = old {
            if old.get("data") != obj.get("data") {
                errs.invalid("data", &json!("<data>"), "field is immutable");
            }
        }
        return;
    }
    let Some(spec) = obj.get("spec") else {
        errs.required("spec", "");
        return;
    };
    if r.plural == "cronjobs" {
        match spec.get("schedule").and_then(Value::as_str) {
            None | Some("") => errs.required("spec.schedule", ""),
            Some(schedule) => {
                if let Err(e) = schedule.parse::<crate::resources::cron_schedule::Schedule>() {
                    errs.invalid("spec.schedule", &json!(schedule), &e.to_string());
                }
            }
        }
        if let Some(tz) = spec.get("timeZone").and_then(Value::as_str) {
            if let Err(e) = crate::resources::cron_schedule::time_zone(Some(tz)) {
                errs.invalid("spec.timeZone", &json!(tz), &e.to_string());
            }
        }
        if let Some(t) = spec.pointer("/jobTemplate/spec/template/spec") {
            pod::validate_spec(t, "spec.jobTemplate.spec.template.spec", errs);
            check_job_restart(t, "spec.jobTemplate.spec.template.spec", errs);
        }
        return;
    }
    for f in [
        "replicas",
        "minReadySeconds",
        "revisionHistoryLimit",
        "parallelism",
        "completions",
        "backoffLimit",
    ] {
        non_negative(spec, f, "spec", errs);
    }
    let selector = spec.get("selector");
    match selector {
        None => errs.required("spec.selector", ""),
        Some(sel) if selector_empty(sel) => errs.invalid(
            "spec.selector",
            sel,
            "empty selector is invalid for deployment",
        ),
        Some(sel) => {
            let labels = spec
                .pointer("/template/metadata/labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            if !selector_matches(sel, &labels) {
                errs.invalid(
                    "spec.template.metadata.labels",
                    &Value::Object(labels),
                    "`selector` does not match template `labels`",
                );
            }
        }
    }
    match spec.pointer("/template/spec") {
        Some(t) => {
            pod::validate_spec(t, "spec.template.spec", errs);
            if r.plural == "jobs" {
                check_job_restart(t, "spec.template.spec", errs);
            } else if t.get("restartPolicy").and_then(Value::as_str) != Some("Always") {
                errs.not_supported(
                    "spec.template.spec.restartPolicy",
                    t.get("restartPolicy").unwrap_or(&Value::Null),
                    &["Always"],
                );
            }
        }
        None => errs.required("spec.template", ""),
    }
    if let Some(old) = old {
        if r.group == "apps" && old.pointer("/spec/selector") != selector {
            errs.immutable("spec.selector", selector.unwrap_or(&Value::Null));
        }
        if r.plural == "jobs" {
            for f in ["selector", "template", "completions", "completionMode"] {
                let (o, n) = (old.pointer(&format!("/spec/{f}")), spec.get(f));
                if o != n
                    && !(f == "completions"
                        && spec.get("completionMode") == Some(&json!("Indexed")))
                {
                    errs.immutable(format!("spec.{f}"), n.unwrap_or(&Value::Null));
                }
            }
        }
    }
}

fn check_job_restart(t: &Value, at: &str, errs: &mut FieldErrors) {
    match t.get("restartPolicy").and_then(Value::as_str) {
        Some("OnFailure" | "Never") => {}
        other => errs.not_supported(
            format!("{at}.restartPolicy"),
            &json!(other),
            &["OnFailure", "Never"],
        ),
    }
}

/// ReplicationController: replicas, selector matching the template.
pub fn validate_rc(obj: &Value, errs: &mut FieldErrors) {
    let Some(spec) = obj.get("spec") else {
        errs.required("spec", "");
        return;
    };
    non_negative(spec, "replicas", "spec", errs);
    let selector = spec.get("selector").and_then(Value::as_object);
    let labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object);
    match (selector, labels) {
        (None, _) => errs.required("spec.selector", ""),
        (Some(s), Some(l)) => {
            if !s.iter().all(|(k, v)| l.get(k) == Some(v)) {
                errs.invalid(
                    "spec.template.metadata.labels",
                    &Value::Object(l.clone()),
                    "`selector` does not match template `labels`",
                );
            }
        }
        (Some(_), None) => errs.required("spec.template.metadata.labels", ""),
    }
    if let Some(t) = spec.pointer("/template/spec") {
        pod::validate_spec(t, "spec.template.spec", errs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    #[test]
    fn deployment_defaults_and_selector_check() {
        let r = find("apps", "v1", "deployments").unwrap();
        let mut d = json!({"metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}});
        default(r, &mut d);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        let mut errs = FieldErrors::default();
        validate(r, &d, None, &mut errs);
        assert!(errs.0.is_empty(), "{errs:?}");
        d["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        validate(r, &d, None, &mut errs);
        assert_eq!(errs.0[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn jobs_get_a_selector_and_need_a_restart_policy() {
        let r = find("batch", "v1", "jobs").unwrap();
        let mut j = json!({"metadata": {"name": "j", "uid": "u1"}, "spec": {
            "template": {"spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}});
        default(r, &mut j);
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        let mut errs = FieldErrors::default();
        validate(r, &j, None, &mut errs);
        assert_eq!(errs.0.len(), 1);
        assert_eq!(errs.0[0].field, "spec.template.spec.restartPolicy");
    }
}
