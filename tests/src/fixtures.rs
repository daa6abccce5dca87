//! Valid example policies.

use shepherd_proto::v1;

/// The example policy shipped in `deploy/examples/chat-policy.json`.
pub const CHAT_POLICY_JSON: &str = include_str!("../../deploy/examples/chat-policy.json");

/// The example policy, renamed.
pub fn chat_policy(name: &str) -> v1::Policy {
    let mut policy: v1::Policy = serde_json::from_str(CHAT_POLICY_JSON).unwrap();
    policy.name = name.into();
    policy
}

/// The smallest valid policy: one backend, all traffic to it.
pub fn minimal_policy(name: &str) -> v1::Policy {
    v1::Policy {
        name: name.into(),
        r#match: Some(v1::RouteMatch {
            path_prefix: "/v1/".into(),
            header: None,
        }),
        backends: vec![v1::Backend {
            name: "primary".into(),
            base_url: "http://127.0.0.1:18000".into(),
            ..Default::default()
        }],
        traffic: Some(v1::Traffic {
            baseline: "primary".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Deep-merges `extra` into `into` (objects key by key; anything else
/// replaces), to derive a test policy from a base one.
pub fn merge_json(into: &mut serde_json::Value, extra: serde_json::Value) {
    use serde_json::Value;
    match (into, extra) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge_json(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}
