//! A custom resource's Table: its `additionalPrinterColumns` (or kube's default Age) after
//! the name, each cell found with the column's JSONPath (`.spec.replicas`,
//! `.status.conditions[?(@.type=="Ready")].status`, `.spec.items[*].name`), dates shown as
//! ages as kube-apiserver shows them.
use serde_json::{json, Value};

use super::definition::PrinterColumn;

/// One step of a JSONPath.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    /// `[?(@.a.b=="v")]` (or `!=`), or `[?(@.a)]` (present).
    Filter(Vec<String>, Option<(bool, Value)>),
}

/// Parses the JSONPath subset printer columns use; None when it is not understood.
fn parse(path: &str) -> Option<Vec<Step>> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(p);
    let mut steps = Vec::new();
    let mut rest = p.strip_prefix('$').unwrap_or(p);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                steps.push(Step::Field(r[..end].to_string()));
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let close = bracket_end(r)?;
            let inner = r[..close].trim();
            rest = &r[close + 1..];
            if inner == "*" {
                steps.push(Step::All);
            } else if let Some(f) = inner.strip_prefix("?(").and_then(|x| x.strip_suffix(')')) {
                steps.push(filter(f.trim())?);
            } else if let Some(name) = inner.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
                steps.push(Step::Field(name.to_string()));
            } else {
                steps.push(Step::Index(inner.parse().ok()?));
            }
        } else {
            return None;
        }
    }
    Some(steps)
}

/// Where the `]` closing a bracket is, skipping quoted strings.
fn bracket_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, ']') => return Some(i),
            _ => {}
        }
    }
    None
}

fn filter(f: &str) -> Option<Step> {
    let (lhs, op) = match (f.find("=="), f.find("!=")) {
        (Some(i), _) => (&f[..i], Some((true, &f[i + 2..]))),
        (_, Some(i)) => (&f[..i], Some((false, &f[i + 2..]))),
        _ => (f, None),
    };
    let field: Vec<String> = lhs
        .trim()
        .strip_prefix("@.")?
        .split('.')
        .map(str::to_string)
        .collect();
    let cmp = match op {
        None => None,
        Some((eq, v)) => {
            let v = v.trim();
            let value = match v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
            {
                Some(s) => json!(s),
                None => serde_json::from_str(v).ok()?,
            };
            Some((eq, value))
        }
    };
    Some(Step::Filter(field, cmp))
}

fn find<'a>(steps: &[Step], v: &'a Value, out: &mut Vec<&'a Value>) {
    let Some((step, rest)) = steps.split_first() else {
        out.push(v);
        return;
    };
    match step {
        Step::Field(f) => {
            if let Some(x) = v.get(f) {
                find(rest, x, out);
            }
        }
        Step::Index(i) => {
            if let Some(a) = v.as_array() {
                let i = if *i < 0 { a.len() as i64 + i } else { *i };
                if let Some(x) = usize::try_from(i).ok().and_then(|i| a.get(i)) {
                    find(rest, x, out);
                }
            }
        }
        Step::All => match v {
            Value::Array(a) => a.iter().for_each(|x| find(rest, x, out)),
            Value::Object(m) => m.values().for_each(|x| find(rest, x, out)),
            _ => {}
        },
        Step::Filter(field, cmp) => {
            if let Some(a) = v.as_array() {
                for x in a {
                    let got = field.iter().try_fold(x, |acc, f| acc.get(f));
                    let keep = match (got, cmp) {
                        (Some(_), None) => true,
                        (Some(g), Some((true, want))) => g == want,
                        (Some(g), Some((false, want))) => g != want,
                        (None, Some((false, _))) => true,
                        (None, _) => false,
                    };
                    if keep {
                        find(rest, x, out);
                    }
                }
            }
        }
    }
}

/// The cell of one column for one object (null when the path finds nothing).
fn cell(col: &PrinterColumn, obj: &Value) -> Value {
    let Some(steps) = parse(&col.json_path) else {
        return Value::Null;
    };
    let mut found = Vec::new();
    find(&steps, obj, &mut found);
    match found.as_slice() {
        [] => Value::Null,
        [one] if col.ty == "date" => match one.as_str() {
            Some(ts) => json!(crate::apiserver::table::age_of(Some(ts))),
            None => (*one).clone(),
        },
        [one] => match (col.ty.as_str(), one) {
            ("integer" | "number" | "boolean", v) => (*v).clone(),
            (_, Value::String(s)) => json!(s),
            (_, v) => json!(v.to_string()),
        },
        many => json!(many
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")),
    }
}

/// The columns of a custom resource: kube's Age when the CRD names none.
pub fn columns_of(defined: &[PrinterColumn]) -> Vec<PrinterColumn> {
    if !defined.is_empty() {
        return defined.to_vec();
    }
    vec![PrinterColumn {
        name: "Age".into(),
        ty: "date".into(),
        format: String::new(),
        description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
        priority: 0,
        json_path: ".metadata.creationTimestamp".into(),
    }]
}

/// The Table's column definitions: Name, then the CRD's.
pub fn definitions(cols: &[PrinterColumn]) -> Vec<Value> {
    let mut out = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    })];
    out.extend(cols.iter().map(|c| {
        json!({"name": c.name, "type": c.ty, "format": c.format, "description": c.description, "priority": c.priority})
    }));
    out
}

/// One row's cells: the name, then each column's.
pub fn cells(cols: &[PrinterColumn], obj: &Value) -> Vec<Value> {
    let mut out = vec![obj
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null)];
    out.extend(cols.iter().map(|c| cell(c, obj)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(ty: &str, path: &str) -> PrinterColumn {
        PrinterColumn {
            name: "x".into(),
            ty: ty.into(),
            format: String::new(),
            description: String::new(),
            priority: 0,
            json_path: path.into(),
        }
    }

    #[test]
    fn json_paths_find_what_kubectl_finds() {
        let obj = json!({
            "metadata": {"name": "a"},
            "spec": {"replicas": 3, "items": [{"name": "p"}, {"name": "q"}], "labels": {"k.io/x": "v"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"}]},
        });
        assert_eq!(cell(&col("integer", ".spec.replicas"), &obj), json!(3));
        assert_eq!(
            cell(
                &col("string", ".status.conditions[?(@.type==\"Ready\")].status"),
                &obj
            ),
            json!("True")
        );
        assert_eq!(
            cell(&col("string", ".spec.items[*].name"), &obj),
            json!("p,q")
        );
        assert_eq!(
            cell(&col("string", ".spec.items[-1].name"), &obj),
            json!("q")
        );
        assert_eq!(
            cell(&col("string", ".spec.labels['k.io/x']"), &obj),
            json!("v")
        );
        assert_eq!(cell(&col("string", ".spec.missing"), &obj), Value::Null);
        assert_eq!(cells(&columns_of(&[]), &obj).len(), 2);
    }
}
