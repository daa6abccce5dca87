//! Policy files: one `Policy` object or a list of them, in the protobuf JSON
//! mapping (the form grpcurl and the control plane use). The agent reads
//! JSON files, `shepherdctl` JSON or YAML; both read them here, so a type
//! error names the same field path (`[1].traffic.candidate_weight: ...`)
//! wherever it is made.

use crate::v1;

/// The policies of a parsed file: an object is one policy, an array a list.
pub fn policies_from_value(value: serde_json::Value) -> Result<Vec<v1::Policy>, String> {
    let located = |e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    };
    match value {
        serde_json::Value::Array(_) => serde_path_to_error::deserialize(value).map_err(located),
        serde_json::Value::Object(_) => serde_path_to_error::deserialize(value)
            .map(|p| vec![p])
            .map_err(located),
        _ => Err("expected a policy (an object with its fields) or a list of them".into()),
    }
}

/// The policies of a JSON file's text.
pub fn policies_from_json(text: &str) -> Result<Vec<v1::Policy>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    policies_from_value(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One policy or a list; a type error names its field path, in a list
    /// with the item's index.
    #[test]
    fn reads_one_or_a_list_naming_fields() {
        let one = r#"{"name": "a", "traffic": {"baseline": "x"}}"#;
        assert_eq!(policies_from_json(one).unwrap().len(), 1);
        assert_eq!(
            policies_from_json(&format!("[{one}, {one}]"))
                .unwrap()
                .len(),
            2
        );
        let weight = r#"[{"name": "a"}, {"name": "b", "traffic": {"candidate_weight": "10%"}}]"#;
        let e = policies_from_json(weight).unwrap_err();
        assert!(e.starts_with("[1].traffic.candidate_weight: "), "{e}");
        let e = policies_from_json(r#"{"traffic": {"candidate_weight": "10%"}}"#).unwrap_err();
        assert!(e.starts_with("traffic.candidate_weight: "), "{e}");
        assert!(
            policies_from_json("3")
                .unwrap_err()
                .contains("expected a policy")
        );
        assert!(
            policies_from_json("{")
                .unwrap_err()
                .starts_with("invalid JSON")
        );
    }
}
