//! `sanectl diff -f FILE`: what `apply` would change, resource by resource
//! and field by field, read against the server without writing anything.

use crate::client::ApiClient;
use crate::error::Error;
use crate::resource::{Kind, Resource};
use http::StatusCode;
use serde::Serialize;
use serde_json::Value;

/// What apply would do to one resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceDiff {
    /// Its kind.
    pub kind: Kind,
    /// Its key.
    pub key: String,
    /// `create`, `update` or `unchanged`.
    pub action: &'static str,
    /// For `update`: each changed field, by path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
}

/// One field that would change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// Field path (`rules[0].destinations[1].weight`).
    pub path: String,
    /// Value on the server (`null`: absent).
    pub from: Value,
    /// Value in the file (`null`: absent).
    pub to: Value,
}

/// Compares every resource of `resources` (file order) with the server's.
pub async fn diff(
    client: &ApiClient,
    resources: Vec<Resource>,
) -> Result<Vec<ResourceDiff>, Error> {
    let mut out = Vec::new();
    for mut r in resources {
        r.normalize();
        let (kind, key) = (r.kind(), r.key());
        let current = match client.get(kind, &key).await {
            Ok(v) => Some(v),
            Err(Error::Api { status, .. }) if status == StatusCode::NOT_FOUND => None,
            Err(e) => return Err(e),
        };
        let wanted = r.to_json();
        let (action, changes) = match current {
            None => ("create", Vec::new()),
            Some(current) => {
                let mut changes = Vec::new();
                compare("", &current, &wanted, &mut changes);
                if changes.is_empty() {
                    ("unchanged", changes)
                } else {
                    ("update", changes)
                }
            }
        };
        out.push(ResourceDiff {
            kind,
            key,
            action,
            changes,
        });
    }
    Ok(out)
}

/// Text form: `+ kind key` (create), `~ kind key` then `    path: from -> to`
/// (update), `= kind key` (unchanged).
pub fn render(diffs: &[ResourceDiff]) -> String {
    let mut out = String::new();
    for d in diffs {
        let mark = match d.action {
            "create" => '+',
            "update" => '~',
            _ => '=',
        };
        out.push_str(&format!("{mark} {} {}\n", d.kind, d.key));
        for c in &d.changes {
            out.push_str(&format!("    {}: {} -> {}\n", c.path, c.from, c.to));
        }
    }
    out
}

fn compare(path: &str, from: &Value, to: &Value, out: &mut Vec<FieldChange>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let null = Value::Null;
                compare(
                    &join(k),
                    a.get(k).unwrap_or(&null),
                    b.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if from != to => out.push(FieldChange {
            path: path.to_string(),
            from: from.clone(),
            to: to.clone(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_fields_are_named_by_path() {
        let mut out = Vec::new();
        compare(
            "",
            &json!({"name": "r", "rules": [{"destinations": [{"weight": 80}, {"weight": 20}]}]}),
            &json!({"name": "r", "rules": [{"destinations": [{"weight": 50}, {"weight": 50}]}]}),
            &mut out,
        );
        let paths: Vec<&str> = out.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "rules[0].destinations[0].weight",
                "rules[0].destinations[1].weight"
            ]
        );
        assert_eq!(out[0].from, json!(80));
        assert_eq!(out[0].to, json!(50));
    }
}
