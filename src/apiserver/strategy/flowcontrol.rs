//! API Priority and Fairness objects' defaults (flowcontrol.apiserver.k8s.io/v1), as
//! kube-apiserver fills them: a FlowSchema's matchingPrecedence (1000); a limited
//! PriorityLevelConfiguration's nominalConcurrencyShares (30), lendablePercent (0) and
//! queuing (64 queues, hand size 8, 50 per queue). krab stores them; requests are not
//! queued by them.
use serde_json::{json, Value};

use super::super::resources::Resource;

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if let Some(o) = obj.as_object_mut() {
        o.entry(field).or_insert(value);
    }
}

pub fn default(r: &Resource, obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    match r.plural {
        "flowschemas" => set_default(spec, "matchingPrecedence", json!(1000)),
        "prioritylevelconfigurations" => {
            if let Some(limited) = spec.get_mut("limited").filter(|l| l.is_object()) {
                set_default(limited, "nominalConcurrencyShares", json!(30));
                set_default(limited, "lendablePercent", json!(0));
                if let Some(queuing) = limited
                    .pointer_mut("/limitResponse/queuing")
                    .filter(|q| q.is_object())
                {
                    set_default(queuing, "queues", json!(64));
                    set_default(queuing, "handSize", json!(8));
                    set_default(queuing, "queueLengthLimit", json!(50));
                }
            }
            if let Some(exempt) = spec.get_mut("exempt").filter(|e| e.is_object()) {
                set_default(exempt, "nominalConcurrencyShares", json!(0));
                set_default(exempt, "lendablePercent", json!(0));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_levels_and_flow_schemas_get_kubes_defaults() {
        let pl = crate::apiserver::resources::find(
            "flowcontrol.apiserver.k8s.io",
            "v1",
            "prioritylevelconfigurations",
        )
        .unwrap();
        let mut obj = json!({"spec": {"type": "Limited", "limited": {"limitResponse": {"type": "Queue", "queuing": {"queues": 16}}}}});
        default(pl, &mut obj);
        assert_eq!(
            obj["spec"]["limited"],
            json!({"nominalConcurrencyShares": 30, "lendablePercent": 0,
                   "limitResponse": {"type": "Queue", "queuing": {"queues": 16, "handSize": 8, "queueLengthLimit": 50}}})
        );
        let fs =
            crate::apiserver::resources::find("flowcontrol.apiserver.k8s.io", "v1", "flowschemas")
                .unwrap();
        let mut obj = json!({"spec": {"priorityLevelConfiguration": {"name": "x"}}});
        default(fs, &mut obj);
        assert_eq!(obj["spec"]["matchingPrecedence"], 1000);
    }
}
