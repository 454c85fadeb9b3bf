//! ResourceQuota admission: a create is charged to every quota of its namespace that covers
//! it and limits something it uses. The raised `status.used` is written in the same
//! transaction as the object, guarded by each quota's revision, so two creates racing for
//! the last unit cannot both win (kube gets there by retrying quota status updates). A
//! quota whose usage the controller has not counted yet refuses, as kube's does.
use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::{at_revision, decode, encode, put, Registry};
use crate::apiserver::resources::Resource;
use crate::apiserver::status::ApiError;
use crate::resources::quota::{self, Usage};
use crate::store::types::{Compare, TxnOp};

/// What charging a create to its quotas adds to the create's transaction.
#[derive(Default)]
pub(super) struct Charges {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
}

fn names(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(",")
}

fn masked(u: &Usage, keep: &BTreeSet<String>) -> Usage {
    u.iter()
        .filter(|(k, _)| keep.contains(*k))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

impl Registry {
    /// The quota updates a create of `obj` needs, or Forbidden naming the quota it fails.
    pub(super) async fn charge_quotas(
        &self,
        r: &Resource,
        ns: &str,
        name: &str,
        obj: &Value,
    ) -> Result<Charges, ApiError> {
        let mut charges = Charges::default();
        let quotas = self.stored_in("resourcequotas", ns).await?;
        if quotas.is_empty() {
            return Ok(charges);
        }
        let kind = (r.group.to_string(), r.plural.to_string());
        let delta = quota::usage(r.group, r.plural, obj, Timestamp::now());
        let forbidden = |message: String| {
            let what = if r.group.is_empty() {
                r.plural.to_string()
            } else {
                format!("{}.{}", r.plural, r.group)
            };
            ApiError::forbidden_on(
                r.group,
                r.plural,
                name,
                format!("{what} \"{name}\" is forbidden: {message}"),
            )
        };
        for kv in &quotas {
            let mut q = decode(kv)?;
            let qname = q
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let spec = q.get("spec").cloned().unwrap_or(Value::Null);
            if !quota::covers(&spec, r.group, r.plural, obj) {
                continue;
            }
            // What the quota limits (as last counted) of this kind of object.
            let hard = quota::parse(q.pointer("/status/hard"));
            let restricted: BTreeSet<String> = hard
                .keys()
                .filter(|k| quota::counted_kind(k).as_ref() == Some(&kind))
                .cloned()
                .collect();
            if restricted.is_empty() {
                continue;
            }
            if r.group.is_empty() && r.plural == "pods" {
                if let Some(why) = quota::missing_compute(&restricted, obj) {
                    return Err(forbidden(format!("failed quota: {qname}: {why}")));
                }
            }
            let mut used = quota::parse(q.pointer("/status/used"));
            if restricted.iter().any(|k| !used.contains_key(k)) {
                return Err(forbidden(format!(
                    "status unknown for quota: {qname}, resource: {}",
                    names(&restricted)
                )));
            }
            let requested = masked(&delta, &restricted);
            if requested.is_empty() {
                continue;
            }
            let exceeded: BTreeSet<String> = requested
                .iter()
                .filter(|(k, v)| used.get(*k).copied().unwrap_or(0) + **v > hard[*k])
                .map(|(k, _)| k.clone())
                .collect();
            if !exceeded.is_empty() {
                return Err(forbidden(format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    quota::pretty(&masked(&requested, &exceeded)),
                    quota::pretty(&masked(&used, &exceeded)),
                    quota::pretty(&masked(&hard, &exceeded)),
                )));
            }
            for (k, v) in &requested {
                *used.entry(k.clone()).or_default() += v;
            }
            q["status"]["used"] = quota::to_list(&used);
            charges.compare.push(at_revision(&kv.key, kv.mod_revision));
            charges.success.push(put(&kv.key, encode(&q)));
        }
        Ok(charges)
    }
}
