//! Field management: `metadata.managedFields` kept on every write, and server-side apply
//! (`application/apply-patch+yaml`) on top of it, as kube-apiserver's field manager does.
//! Every create, update and patch gives the fields it set or changed to its manager (the
//! `fieldManager` parameter, else the client's user agent, else who the caller is) in an
//! `Update` entry and takes them from the others; an apply merges the applied configuration
//! into the object, removes what the same manager applied before and applies no more, and
//! refuses (409, one cause per field) to change fields another manager owns unless forced.
pub mod fieldset;
mod merge;
pub mod shape;

use axum::http::StatusCode;
use serde_json::{json, Value};

use self::fieldset::{leaves, path_string, FieldSet, Path};
use self::shape::Shape;
use super::objects;
use super::resources::Resource;
use super::status::ApiError;

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: String,
    fields: FieldSet,
}

impl Entry {
    fn read(v: &Value) -> Entry {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Entry {
            manager: s("manager"),
            operation: s("operation"),
            api_version: s("apiVersion"),
            time: v.get("time").and_then(Value::as_str).map(str::to_string),
            subresource: s("subresource"),
            fields: v
                .get("fieldsV1")
                .map(FieldSet::from_fields_v1)
                .unwrap_or_default(),
        }
    }

    fn to_value(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(t) = &self.time {
            v["time"] = json!(t);
        }
        if !self.subresource.is_empty() {
            v["subresource"] = json!(self.subresource);
        }
        v
    }

    /// Whether this entry is the one a write by (manager, operation, subresource) owns; an
    /// Update entry is also per apiVersion, as kube keys them.
    fn is(&self, manager: &str, operation: &str, api_version: &str, subresource: &str) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == subresource
            && (operation == "Apply" || self.api_version == api_version)
    }

    /// How conflicts name the manager (kube's printManager).
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
            if let Some(t) = &self.time {
                s.push_str(&format!(" at {t}"));
            }
        }
        s
    }
}

fn entries_of(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|l| l.iter().map(Entry::read).collect())
        .unwrap_or_default()
}

fn store_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_value)
        .collect();
    match obj.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) if list.is_empty() => {
            m.remove("managedFields");
        }
        Some(m) => {
            m.insert("managedFields".into(), Value::Array(list));
        }
        None => {}
    }
}

fn shape_of(r: &Resource) -> Shape<'_> {
    let custom = r.custom.as_ref().and_then(|c| c.schema.as_ref());
    Shape::of_kind(r.group, r.version, r.kind, custom)
}

/// The top-level fields a write cannot set and so never owns (kube's reset fields): a kind's
/// status through the main resource when it has a status subresource, its spec through the
/// status subresource.
fn reset_fields(r: &Resource, subresource: &str) -> &'static [&'static str] {
    match subresource {
        "status" => &["spec"],
        "" if r.has_subresource("status") => &["status"],
        _ => &[],
    }
}

fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    objects::rfc3339(t.replace_nanosecond(0).unwrap_or(t))
}

/// Who a write is managed by when it names no `fieldManager`: the user agent's product (as
/// kube), else what the caller is (krab's own loops send no user agent).
pub fn default_manager(user_agent: Option<&str>, user: &str) -> String {
    if let Some(ua) = user_agent.filter(|u| !u.is_empty()) {
        let product = ua.split('/').next().unwrap_or(ua);
        return product.chars().take(128).collect();
    }
    if user.starts_with("system:serviceaccount:kube-system:")
        || user == "system:kube-controller-manager"
    {
        "kube-controller-manager".into()
    } else if user == "system:kube-scheduler" {
        "kube-scheduler".into()
    } else if user.starts_with("system:node:") {
        "kubelet".into()
    } else {
        user.chars().take(128).collect()
    }
}

/// Records a create or update by `manager` in `new`'s managedFields: the fields it set or
/// changed become its own and stop being anyone else's. Managed fields the writer set itself
/// are kept as written (a list with one empty entry clears them, as in kube).
pub fn track_update(
    r: &Resource,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
) {
    let stored = old.and_then(|o| o.pointer("/metadata/managedFields"));
    let (clears, keeps_given) = match new.pointer("/metadata/managedFields") {
        Some(given @ Value::Array(list)) => (
            list.len() == 1 && list[0].as_object().is_some_and(|o| o.is_empty()),
            !list.is_empty() && Some(given) != stored,
        ),
        _ => (false, false),
    };
    if clears {
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
        return;
    }
    if keeps_given {
        return;
    }
    let shape = shape_of(r);
    let reset = reset_fields(r, subresource);
    let empty = Value::Null;
    let old_leaves = leaves(old.unwrap_or(&empty), &shape, reset);
    let new_leaves = leaves(new, &shape, reset);
    let changed: FieldSet = FieldSet(
        new_leaves
            .iter()
            .filter(|(p, v)| old_leaves.get(*p) != Some(*v))
            .map(|(p, _)| p.clone())
            .collect(),
    );
    let removed = FieldSet(
        old_leaves
            .keys()
            .filter(|p| !new_leaves.contains_key(*p))
            .cloned()
            .collect(),
    );
    if changed.is_empty() && removed.is_empty() {
        // Nothing this write could own changed: the entries stay exactly as stored.
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            match stored {
                Some(list) => m.insert("managedFields".into(), list.clone()),
                None => m.remove("managedFields"),
            };
        }
        return;
    }
    let mut entries = old.map(entries_of).unwrap_or_default();
    let api_version = r.api_version();
    let mut mine = None;
    for (i, e) in entries.iter_mut().enumerate() {
        if !removed.is_empty() {
            e.fields = e.fields.minus(&removed);
        }
        if e.is(manager, "Update", &api_version, subresource) {
            mine = Some(i);
        } else if !e.fields.is_disjoint(&changed) {
            e.fields = e.fields.minus(&changed);
        }
    }
    if !changed.is_empty() {
        match mine {
            Some(i) => {
                entries[i].fields = entries[i].fields.union(&changed);
                entries[i].time = Some(now());
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version,
                time: Some(now()),
                subresource: subresource.to_string(),
                fields: changed,
            }),
        }
    }
    store_entries(new, entries);
}

/// Server-side apply of `applied` (already decoded) by `manager` to `live` (None: the object
/// does not exist yet). Returns the object to write, managedFields included.
pub fn apply(
    r: &Resource,
    live: Option<&Value>,
    mut applied: Value,
    manager: &str,
    force: bool,
    subresource: &str,
) -> Result<Value, ApiError> {
    let shape = shape_of(r);
    // The server's own fields are not the applier's to set.
    if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "selfLink",
        ] {
            m.remove(f);
        }
    }
    let reset = reset_fields(r, subresource);
    if let Some(o) = applied.as_object_mut() {
        for f in reset {
            o.remove(*f);
        }
    }
    let applied_leaves = leaves(&applied, &shape, reset);
    let applied_set = FieldSet::of(&applied_leaves);
    let mut entries = live.map(entries_of).unwrap_or_default();
    let api_version = r.api_version();
    let mut merged = match live {
        Some(l) => {
            let mut l = l.clone();
            if let Some(m) = l.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("managedFields");
            }
            merge::merge(&l, &applied, &shape)
        }
        None => applied.clone(),
    };
    if let Some(live) = live {
        // Conflicts: fields another manager owns whose value this apply would change.
        let mut conflicts: Vec<(usize, Path)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if e.is(manager, "Apply", &api_version, subresource) {
                continue;
            }
            for p in e.fields.0.intersection(&applied_set.0) {
                // A keyed item's own entry says only that it exists: its fields conflict.
                let item = matches!(p.last(), Some(fieldset::Element::Key(_)));
                if !item && fieldset::get(live, p) != fieldset::get(&merged, p) {
                    conflicts.push((i, p.clone()));
                }
            }
        }
        if !conflicts.is_empty() {
            if !force {
                return Err(conflict_error(&entries, &conflicts));
            }
            for (i, p) in &conflicts {
                entries[*i].fields.0.remove(p);
            }
        }
    }
    // What this manager applied before and applies no more goes, unless someone else
    // also owns it (or something under it).
    let previous = entries
        .iter()
        .find(|e| e.is(manager, "Apply", &api_version, subresource))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut dropped: Vec<Path> = previous.minus(&applied_set).0.into_iter().collect();
    // Whole items before their fields (an item's key fields find it).
    dropped.sort_by_key(Vec::len);
    for p in &dropped {
        let kept = entries.iter().any(|e| {
            !e.is(manager, "Apply", &api_version, subresource)
                && e.fields.0.iter().any(|q| q.starts_with(p))
        });
        if !kept && fieldset::remove(&mut merged, p) {
            // Maps left empty by the removal go too (a last label takes `labels` along).
            let mut parent = &p[..p.len() - 1];
            while !parent.is_empty()
                && fieldset::get(&merged, parent)
                    .is_some_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
                && !entries.iter().any(|e| e.fields.0.contains(parent))
            {
                fieldset::remove(&mut merged, parent);
                parent = &parent[..parent.len() - 1];
            }
        }
    }
    // Others keep only what is still there; this manager owns what it applied.
    let present = FieldSet::of(&leaves(&merged, &shape, reset));
    // The entry's time moves only when what it owns changes, so a repeated apply is a no-op.
    let time = entries
        .iter()
        .find(|e| e.is(manager, "Apply", &api_version, subresource) && e.fields == applied_set)
        .and_then(|e| e.time.clone())
        .unwrap_or_else(now);
    entries.retain(|e| !e.is(manager, "Apply", &api_version, subresource));
    for e in entries.iter_mut() {
        e.fields = FieldSet(e.fields.0.intersection(&present.0).cloned().collect());
    }
    entries.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version,
        time: Some(time),
        subresource: subresource.to_string(),
        fields: applied_set,
    });
    store_entries(&mut merged, entries);
    Ok(merged)
}

fn conflict_error(entries: &[Entry], conflicts: &[(usize, Path)]) -> ApiError {
    let message = if let [(i, p)] = conflicts {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            entries[*i].describe(),
            path_string(p)
        )
    } else {
        let mut managers: Vec<usize> = conflicts.iter().map(|(i, _)| *i).collect();
        managers.sort_by_key(|i| entries[*i].manager.clone());
        managers.dedup();
        let mut lines = Vec::new();
        for i in managers {
            lines.push(format!("conflicts with {}:", entries[i].describe()));
            for (_, p) in conflicts.iter().filter(|(j, _)| *j == i) {
                lines.push(format!("- {}", path_string(p)));
            }
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let mut err = ApiError::new(StatusCode::CONFLICT, "Conflict", message);
    err.causes = conflicts
        .iter()
        .map(|(i, p)| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {}", entries[*i].describe()),
                "field": path_string(p),
            })
        })
        .collect();
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::find;

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "web", "image": image}]}}},
        })
    }

    #[test]
    fn apply_owns_fields_conflicts_with_other_managers_and_removes_what_it_dropped() {
        let r = find("apps", "v1", "deployments").unwrap();
        // Created by apply: the applier owns everything it sent.
        let created = apply(r, None, deploy(2, "nginx:1"), "ci", false, "").unwrap();
        let managers = created["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(managers.len(), 1);
        assert_eq!(managers[0]["operation"], "Apply");
        assert!(managers[0]["fieldsV1"]["f:spec"]["f:replicas"].is_object());

        // Another writer (an update, e.g. kubectl scale) takes replicas.
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(5);
        track_update(r, Some(&created), &mut scaled, "kubectl-scale", "");
        let managers = scaled["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(managers.len(), 2);
        assert!(managers[0]["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_none());
        assert!(managers[1]["fieldsV1"]["f:spec"]["f:replicas"].is_object());

        // Applying replicas again conflicts, naming the owner and the field...
        let err = apply(r, Some(&scaled), deploy(3, "nginx:1"), "ci", false, "").unwrap_err();
        assert_eq!(err.code, StatusCode::CONFLICT);
        assert!(
            err.message.starts_with(
                "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1 at "
            ),
            "{}",
            err.message
        );
        assert!(err.message.ends_with(": .spec.replicas"), "{}", err.message);
        assert_eq!(err.causes[0]["field"], ".spec.replicas");
        // ...unless the value is the same (shared ownership) or the apply is forced.
        let same = apply(r, Some(&scaled), deploy(5, "nginx:2"), "ci", false, "").unwrap();
        assert_eq!(
            same["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
        let forced = apply(r, Some(&scaled), deploy(3, "nginx:1"), "ci", true, "").unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let managers = forced["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(
            managers.len(),
            1,
            "kubectl-scale lost its only field: {managers:?}"
        );

        // A label applied before and not any more is removed.
        let mut without_label = deploy(3, "nginx:1");
        without_label["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        let out = apply(r, Some(&forced), without_label, "ci", false, "").unwrap();
        assert!(out["metadata"].get("labels").is_none(), "{out}");
        assert_eq!(out["spec"]["replicas"], 3);
    }

    #[test]
    fn updates_that_change_nothing_leave_managed_fields_alone() {
        let r = find("apps", "v1", "deployments").unwrap();
        let mut created = deploy(2, "nginx:1");
        track_update(r, None, &mut created, "kubectl-create", "");
        let mut again = created.clone();
        track_update(r, Some(&created), &mut again, "other", "");
        assert_eq!(again, created);
        assert_eq!(
            default_manager(Some("kubectl/v1.32.0 (linux/amd64)"), "admin"),
            "kubectl"
        );
        assert_eq!(
            default_manager(None, "system:kube-scheduler"),
            "kube-scheduler"
        );
    }
}
