//! kube's printer columns for the kinds of the API server's own groups: API Priority and
//! Fairness (FlowSchema, PriorityLevelConfiguration) and the aggregator's APIService.
use serde_json::{json, Value};

use super::{age, col, int, Column};

fn s<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn or_none(v: Option<&Value>) -> Value {
    v.cloned().unwrap_or_else(|| json!("<none>"))
}

pub fn flow_schema_columns() -> Vec<Column> {
    vec![
        col("Name"),
        col("PriorityLevel"),
        int("MatchingPrecedence"),
        col("DistinguisherMethod"),
        col("Age"),
        col("MissingPL"),
    ]
}

pub fn flow_schema_cells(o: &Value) -> Vec<Value> {
    let method = match s(o, "/spec/distinguisherMethod/type") {
        "" => "<none>",
        m => m,
    };
    // Whether the priority level named is missing, from the Dangling condition.
    let missing = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Dangling"))
        .and_then(|c| c.get("status").and_then(Value::as_str))
        .unwrap_or("?");
    vec![
        json!(s(o, "/metadata/name")),
        json!(s(o, "/spec/priorityLevelConfiguration/name")),
        or_none(o.pointer("/spec/matchingPrecedence")),
        json!(method),
        json!(age(o)),
        json!(missing),
    ]
}

pub fn priority_level_columns() -> Vec<Column> {
    vec![
        col("Name"),
        col("Type"),
        col("NominalConcurrencyShares"),
        col("Queues"),
        col("HandSize"),
        col("QueueLengthLimit"),
        col("Age"),
    ]
}

pub fn priority_level_cells(o: &Value) -> Vec<Value> {
    let limited = o.pointer("/spec/limited");
    let queuing = limited.and_then(|l| l.pointer("/limitResponse/queuing"));
    let field = |v: Option<&Value>, f: &str| or_none(v.and_then(|v| v.get(f)));
    vec![
        json!(s(o, "/metadata/name")),
        json!(s(o, "/spec/type")),
        field(limited, "nominalConcurrencyShares"),
        field(queuing, "queues"),
        field(queuing, "handSize"),
        field(queuing, "queueLengthLimit"),
        json!(age(o)),
    ]
}

pub fn api_service_columns() -> Vec<Column> {
    vec![col("Name"), col("Service"), col("Available"), col("Age")]
}

pub fn api_service_cells(o: &Value) -> Vec<Value> {
    let service = match s(o, "/spec/service/name") {
        "" => "Local".to_string(),
        name => format!("{}/{name}", s(o, "/spec/service/namespace")),
    };
    let available = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Available"));
    let available = match available {
        Some(c) if s(c, "/status") == "True" => "True".to_string(),
        Some(c) => format!("{} ({})", s(c, "/status"), s(c, "/reason")),
        None => "Unknown".to_string(),
    };
    vec![
        json!(s(o, "/metadata/name")),
        json!(service),
        json!(available),
        json!(age(o)),
    ]
}
