use super::*;
use crate::v1::{
    AbortFault, AgentSelector, DelayFault, HeaderMatch, RouteMatch, Stage, StreamCutFault,
};

fn secs(s: i64) -> Option<Duration> {
    Some(Duration {
        seconds: s,
        nanos: 0,
    })
}

fn backend(name: &str) -> Backend {
    Backend {
        name: name.into(),
        base_url: "https://api.example.com".into(),
        credentials: "env:EXAMPLE_API_KEY".into(),
        ..Default::default()
    }
}

/// A policy that uses every section and breaks no rule.
fn valid() -> Policy {
    Policy {
        name: "chat".into(),
        selector: Some(AgentSelector {
            match_labels: [("app".to_string(), "support-bot".to_string())].into(),
        }),
        r#match: Some(RouteMatch {
            path_prefix: "/v1/".into(),
            header: Some(HeaderMatch {
                name: "x-tenant".into(),
                value: "acme".into(),
            }),
        }),
        backends: vec![backend("baseline"), backend("candidate"), backend("spare")],
        traffic: Some(Traffic {
            baseline: "baseline".into(),
            candidate: "candidate".into(),
            candidate_weight: 100,
            sticky_header: "x-user-id".into(),
            max_candidate_spend_per_hour: None,
        }),
        rollout: Some(RolloutSpec {
            stages: vec![
                Stage {
                    weight: 100,
                    min_bake_time: secs(60),
                    min_requests: 100,
                    max_stage_time: secs(600),
                },
                Stage {
                    weight: 10_000,
                    min_bake_time: secs(60),
                    min_requests: 100,
                    max_stage_time: secs(600),
                },
            ],
            gates: Some(Gates {
                max_error_rate_percent: Some(5.0),
                significance: Some(0.01),
                min_error_rate_effect_percent: Some(1.0),
                max_latency_p99_ratio: Some(1.5),
                ..Default::default()
            }),
            ..Default::default()
        }),
        retry: Some(RetryPolicy {
            max_attempts: 3,
            backoff_base: Some(Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
            backoff_max: secs(2),
            ..Default::default()
        }),
        circuit_breaker: Some(CircuitBreaker {
            consecutive_failures: 5,
            ..Default::default()
        }),
        fallback: vec!["baseline".into(), "spare".into()],
        shadow: Some(Shadow {
            percent: 10.0,
            ..Default::default()
        }),
        faults: vec![Fault {
            backend: "candidate".into(),
            abort: Some(AbortFault {
                percent: 5.0,
                status: 503,
                retry_after: secs(1),
            }),
            delay: Some(DelayFault {
                percent: 1.0,
                duration: secs(2),
            }),
            stream_cut: Some(StreamCutFault {
                percent: 1.0,
                after_chunks: 3,
            }),
            expire_time: Some(Timestamp {
                seconds: 4_000_000_000,
                nanos: 0,
            }),
        }],
        ..Default::default()
    }
}

/// The violations of a policy changed by `edit`, as "field: rule" strings.
fn violations(edit: impl FnOnce(&mut Policy)) -> Vec<String> {
    let mut p = valid();
    edit(&mut p);
    match validate_policy(
        &p,
        Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000)),
    ) {
        Ok(()) => vec![],
        Err(e) => e.violations.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts exactly one violation, on `field`, whose rule contains `rule`.
#[track_caller]
fn assert_one(found: Vec<String>, field: &str, rule: &str) {
    assert_eq!(
        found.len(),
        1,
        "expected one violation on {field}, got {found:?}"
    );
    let prefix = format!("{field}: ");
    assert!(
        found[0].starts_with(&prefix) && found[0].contains(rule),
        "expected `{field}: ...{rule}...`, got {:?}",
        found[0]
    );
}

/// A policy using every section passes.
#[test]
fn valid_policy_passes() {
    assert_eq!(violations(|_| {}), Vec::<String>::new());
}

/// The error names the policy, the field path and the rule.
#[test]
fn error_message_names_policy_field_and_rule() {
    let mut p = valid();
    p.backends[1].base_url = "api.example.com/v1".into();
    let err = validate_policy(&p, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy \"chat\": backends[1].base_url: must be an absolute http or https URL"
    );
}

/// Every broken rule is reported, not only the first.
#[test]
fn all_violations_are_reported() {
    let found = violations(|p| {
        p.name = "Chat".into();
        p.traffic.as_mut().unwrap().candidate_weight = 10_001;
        p.fallback.push("nowhere".into());
    });
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].starts_with("name: "));
    assert!(found[1].starts_with("traffic.candidate_weight: "));
    assert!(found[2].starts_with("fallback[2]: "));
}

/// Names are DNS-label-like and bounded.
#[test]
fn names_are_dns_labels() {
    for bad in [
        "",
        "Chat",
        "1chat",
        "chat-",
        "chat_bot",
        "chät",
        &"a".repeat(64),
    ] {
        let found = violations(|p| p.name = bad.into());
        assert_eq!(found.len(), 1, "{bad:?}: {found:?}");
        assert!(found[0].starts_with("name: "), "{found:?}");
    }
    for good in ["a", "chat", "chat-v2", &"a".repeat(63)] {
        assert!(violations(|p| p.name = good.into()).is_empty(), "{good:?}");
    }
    assert_one(
        violations(|p| {
            p.backends[2].name = "baseline".into();
            p.fallback.clear();
        }),
        "backends[2].name",
        "duplicate of backends[0].name",
    );
}

/// Base URLs must be absolute http(s) and carry no credentials.
#[test]
fn base_url_rules() {
    for bad in [
        "",
        "ftp://example.com",
        "/v1",
        "example.com",
        "https://",
        "https://x/#frag",
    ] {
        let found = violations(|p| p.backends[0].base_url = bad.into());
        assert_eq!(found.len(), 1, "{bad:?}: {found:?}");
        assert!(found[0].starts_with("backends[0].base_url: "), "{found:?}");
    }
    assert_one(
        violations(|p| p.backends[0].base_url = "https://user:pw@api.example.com".into()),
        "backends[0].base_url",
        "without credentials",
    );
    assert_one(
        violations(|p| p.backends[0].base_url = "https://api.example.com/v1?api_key=abc".into()),
        "backends[0].base_url",
        "must not carry credentials",
    );
    // A port out of range, zero or not a number would send the key to the
    // scheme's default port.
    for bad in [
        "http://api.example.com:99999",
        "http://api.example.com:65536",
        "http://api.example.com:abc/v1",
        "http://api.example.com:0",
        "http://api.example.com:",
        "http://[::1]:70000",
    ] {
        let found = violations(|p| p.backends[0].base_url = bad.into());
        assert_eq!(found.len(), 1, "{bad:?}: {found:?}");
        assert!(
            found[0].starts_with("backends[0].base_url: the port \"")
                && found[0].ends_with("must be a number from 1 to 65535"),
            "{bad}: {found:?}"
        );
    }
    for good in [
        "http://127.0.0.1:18000",
        "http://[::1]:8080/v1",
        "https://api.example.com:65535",
        "https://api.openai.com",
        "https://x.openai.azure.com/openai/deployments/d?api-version=2024-06-01",
    ] {
        assert!(
            violations(|p| p.backends[0].base_url = good.into()).is_empty(),
            "{good}"
        );
    }
}

/// Credentials are secret references; a raw key is refused and called one.
#[test]
fn credentials_must_be_references() {
    assert_one(
        violations(|p| {
            p.backends[0].credentials = "sk-proj-abcdefghijklmnopqrstuvwxyz012345".into()
        }),
        "backends[0].credentials",
        "looks like a raw key",
    );
    assert_one(
        violations(|p| p.backends[0].credentials = "OPENAI_API_KEY".into()),
        "backends[0].credentials",
        "env:NAME or file:/absolute/path",
    );
    assert_one(
        violations(|p| p.backends[0].credentials = "file:secrets/key".into()),
        "backends[0].credentials",
        "absolute path",
    );
    assert_one(
        violations(|p| p.backends[0].credentials = "file:/run/../etc/shadow".into()),
        "backends[0].credentials",
        "without '..'",
    );
    assert_one(
        violations(|p| p.backends[0].credentials = "env:1BAD".into()),
        "backends[0].credentials",
        "environment variable",
    );
    for good in ["", "env:OPENAI_API_KEY", "file:/run/secrets/openai"] {
        assert!(
            violations(|p| p.backends[0].credentials = good.into()).is_empty(),
            "{good}"
        );
    }
}

/// Extra headers cannot carry credentials, by name or by value.
#[test]
fn headers_cannot_carry_credentials() {
    assert_one(
        violations(|p| {
            p.backends[0]
                .headers
                .insert("Authorization".into(), "x".into());
        }),
        "backends[0].headers[\"Authorization\"]",
        "credentials go in credentials",
    );
    assert_one(
        violations(|p| {
            p.backends[0]
                .headers
                .insert("x-org".into(), "sk-ant-api03-abcdefghijklmnop".into());
        }),
        "backends[0].headers[\"x-org\"]",
        "looks like a raw key",
    );
    assert_one(
        violations(|p| {
            p.backends[0]
                .headers
                .insert("bad header".into(), "x".into());
        }),
        "backends[0].headers[\"bad header\"]",
        "valid HTTP header name",
    );
    assert!(
        violations(|p| {
            p.backends[0]
                .headers
                .insert("OpenAI-Organization".into(), "org-team".into());
        })
        .is_empty()
    );
}

/// The model map accepts model names and refuses empty names or keys.
#[test]
fn model_map_rules() {
    assert!(
        violations(|p| {
            p.backends[1]
                .model_map
                .insert("gpt-4o".into(), "claude-sonnet-4-5-20250929".into());
            p.backends[1].model_map.insert(
                "*".into(),
                "anthropic.claude-3-5-sonnet-20241022-v2:0".into(),
            );
        })
        .is_empty()
    );
    assert_one(
        violations(|p| {
            p.backends[1]
                .model_map
                .insert("gpt-4o".into(), String::new());
        }),
        "backends[1].model_map[\"gpt-4o\"]",
        "mapped model name",
    );
}

/// Baseline, candidate, fallback, shadow and fault backends must exist.
#[test]
fn references_must_name_backends() {
    assert_one(
        violations(|p| p.traffic.as_mut().unwrap().baseline = "gone".into()),
        "traffic.baseline",
        "no backend is named \"gone\"",
    );
    assert_one(
        violations(|p| p.traffic.as_mut().unwrap().candidate = "gone".into()),
        "traffic.candidate",
        "no backend is named \"gone\"",
    );
    assert_one(
        violations(|p| p.traffic.as_mut().unwrap().candidate = "baseline".into()),
        "traffic.candidate",
        "must differ",
    );
    assert_one(
        violations(|p| p.fallback = vec!["spare".into(), "spare".into()]),
        "fallback[1]",
        "listed twice",
    );
    assert_one(
        violations(|p| p.shadow.as_mut().unwrap().backend = "gone".into()),
        "shadow.backend",
        "no backend",
    );
    assert_one(
        violations(|p| p.faults[0].backend = "gone".into()),
        "faults[0].backend",
        "no backend",
    );
    assert_one(violations(|p| p.traffic = None), "traffic", "required");
}

/// Weights are basis points; a weight needs a candidate.
#[test]
fn weight_rules() {
    assert_one(
        violations(|p| p.traffic.as_mut().unwrap().candidate_weight = 10_001),
        "traffic.candidate_weight",
        "0 to 10000",
    );
    assert_one(
        violations(|p| {
            let t = p.traffic.as_mut().unwrap();
            t.candidate = String::new();
            p.shadow = None;
        }),
        "traffic.candidate_weight",
        "must be 0 when traffic.candidate is empty",
    );
    assert!(violations(|p| p.traffic.as_mut().unwrap().candidate_weight = 10_000).is_empty());
}

/// Stage weights strictly increase and end at 10000; stage times are required.
#[test]
fn stage_rules() {
    // A first stage at weight 0 is a shadow-only stage: it needs shadow on.
    assert!(violations(|p| p.rollout.as_mut().unwrap().stages[0].weight = 0).is_empty());
    assert_one(
        violations(|p| {
            p.rollout.as_mut().unwrap().stages[0].weight = 0;
            p.shadow = None;
        }),
        "rollout.stages[0].weight",
        "shadow-only stage",
    );
    assert_one(
        violations(|p| {
            p.rollout.as_mut().unwrap().stages[0].weight = 0;
            p.shadow.as_mut().unwrap().percent = 0.0;
        }),
        "rollout.stages[0].weight",
        "percent above 0",
    );
    assert_one(
        violations(|p| p.rollout.as_mut().unwrap().stages[0].weight = 10_000),
        "rollout.stages[1].weight",
        "strictly increase",
    );
    assert_one(
        violations(|p| p.rollout.as_mut().unwrap().stages.truncate(1)),
        "rollout.stages[0].weight",
        "the last stage must be 10000",
    );
    assert_one(
        violations(|p| p.rollout.as_mut().unwrap().stages.clear()),
        "rollout.stages",
        "at least one stage",
    );
    assert_one(
        violations(|p| p.rollout.as_mut().unwrap().stages[0].min_bake_time = None),
        "rollout.stages[0].min_bake_time",
        "required",
    );
    assert_one(
        violations(|p| p.rollout.as_mut().unwrap().stages[0].max_stage_time = secs(10)),
        "rollout.stages[0].max_stage_time",
        "not be shorter than min_bake_time",
    );
    let too_many: Vec<Stage> = (1..=21)
        .map(|i| Stage {
            weight: if i == 21 { 10_000 } else { i * 10 },
            min_bake_time: secs(1),
            min_requests: 0,
            max_stage_time: secs(1),
        })
        .collect();
    assert_one(
        violations(|p| p.rollout.as_mut().unwrap().stages = too_many),
        "rollout.stages",
        "at most 20",
    );
}

/// Percentages are 0 to 100 and finite; the significance level is in (0, 0.5).
#[test]
fn percentage_and_significance_rules() {
    assert_one(
        violations(|p| p.shadow.as_mut().unwrap().percent = 100.5),
        "shadow.percent",
        "0 to 100",
    );
    assert_one(
        violations(|p| p.shadow.as_mut().unwrap().percent = f64::NAN),
        "shadow.percent",
        "0 to 100",
    );
    assert_one(
        violations(|p| gates(p).max_error_rate_percent = Some(-1.0)),
        "rollout.gates.max_error_rate_percent",
        "0 to 100",
    );
    assert_one(
        violations(|p| gates(p).significance = Some(0.5)),
        "rollout.gates.significance",
        "between 0 and 0.5",
    );
    assert_one(
        violations(|p| gates(p).max_latency_p99_ratio = Some(0.9)),
        "rollout.gates.max_latency_p99_ratio",
        "from 1",
    );
    assert_one(
        violations(|p| gates(p).max_ttft_p95_ratio = Some(f64::INFINITY)),
        "rollout.gates.max_ttft_p95_ratio",
        "from 1",
    );
    assert_one(
        violations(|p| p.rollout.as_mut().unwrap().pass_rule = 7),
        "rollout.pass_rule",
        "PASS_RULE_NO_REGRESSION or PASS_RULE_PROVEN_NOT_WORSE",
    );
    assert!(
        violations(|p| {
            p.rollout.as_mut().unwrap().pass_rule = crate::v1::PassRule::ProvenNotWorse as i32;
            gates(p).max_ttft_p95_ratio = Some(1.5);
        })
        .is_empty()
    );
    assert_one(
        violations(|p| p.faults[0].abort.as_mut().unwrap().percent = 0.0),
        "faults[0].abort.percent",
        "above 0",
    );
}

/// Durations must be positive and well-formed.
#[test]
fn duration_rules() {
    assert_one(
        violations(|p| p.retry.as_mut().unwrap().backoff_base = secs(0)),
        "retry.backoff_base",
        "must be positive",
    );
    assert_one(
        violations(|p| p.retry.as_mut().unwrap().backoff_max = secs(-1)),
        "retry.backoff_max",
        "must be positive",
    );
    assert_one(
        violations(|p| {
            p.retry.as_mut().unwrap().backoff_max = Some(Duration {
                seconds: 1,
                nanos: -5,
            })
        }),
        "retry.backoff_max",
        "valid duration",
    );
    assert_one(
        violations(|p| {
            p.backends[0].timeouts = Some(Timeouts {
                per_try: secs(30),
                overall: secs(10),
                ..Default::default()
            })
        }),
        "backends[0].timeouts.overall",
        "not be shorter than per_try",
    );
}

/// Retry, breaker and shadow bounds.
#[test]
fn retry_and_breaker_rules() {
    assert_one(
        violations(|p| p.retry.as_mut().unwrap().max_attempts = 11),
        "retry.max_attempts",
        "1 to 10",
    );
    assert_one(
        violations(|p| p.retry.as_mut().unwrap().retry_on = vec![RetryOn::Timeout as i32, 99]),
        "retry.retry_on[1]",
        "must be RETRY_ON_",
    );
    assert_one(
        violations(|p| {
            p.circuit_breaker = Some(CircuitBreaker::default());
        }),
        "circuit_breaker",
        "set consecutive_failures or failure_rate_percent",
    );
    assert_one(
        violations(|p| p.circuit_breaker.as_mut().unwrap().open_time_multiplier = Some(0.5)),
        "circuit_breaker.open_time_multiplier",
        "from 1 to 100",
    );
    assert_one(
        violations(|p| p.backends[0].protocol = 9),
        "backends[0].protocol",
        "PROTOCOL_OPENAI or PROTOCOL_ANTHROPIC",
    );
}

/// Faults must name one backend once, do something, and expire in the future.
#[test]
fn fault_rules() {
    assert_one(
        violations(|p| p.faults[0].expire_time = None),
        "faults[0].expire_time",
        "every fault must expire",
    );
    assert_one(
        violations(|p| {
            p.faults[0].expire_time = Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            })
        }),
        "faults[0].expire_time",
        "must be in the future",
    );
    assert_one(
        violations(|p| {
            p.faults[0].abort = None;
            p.faults[0].delay = None;
            p.faults[0].stream_cut = None;
        }),
        "faults[0]",
        "at least one of abort, delay, stream_cut",
    );
    assert_one(
        violations(|p| p.faults[0].abort.as_mut().unwrap().status = 200),
        "faults[0].abort.status",
        "400 to 599",
    );
    assert_one(
        violations(|p| {
            let again = p.faults[0].clone();
            p.faults.push(again);
        }),
        "faults[1].backend",
        "one entry per backend",
    );
    // An agent loading a file (no `now`) accepts faults that have expired.
    let mut p = valid();
    p.faults[0].expire_time = Some(Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    });
    assert!(validate_policy(&p, None).is_ok());
}

/// Sizes are bounded.
#[test]
fn sizes_are_bounded() {
    let found = violations(|p| {
        p.backends = (0..17).map(|i| backend(&format!("b{i}"))).collect();
        p.traffic.as_mut().unwrap().baseline = "b0".into();
        p.traffic.as_mut().unwrap().candidate = "b1".into();
        p.fallback.clear();
        p.faults.clear();
    });
    assert_one(found, "backends", "at most 16");
    assert_one(
        violations(|p| {
            p.selector.as_mut().unwrap().match_labels = (0..33)
                .map(|i| (format!("k{i}"), "v".to_string()))
                .collect();
        }),
        "selector.match_labels",
        "at most 32 labels",
    );
}

/// The key detector catches keys and leaves model names and ids alone.
#[test]
fn secret_detector() {
    for key in [
        "sk-proj-abcdefghijklmnop",
        "sk-ant-api03-abcdefghijkl",
        "Bearer abcdefghijklmnop",
        "AIzaSyA1234567890abcdefghij",
        "AbCdEf0123456789AbCdEf0123456789",
    ] {
        assert!(looks_like_secret(key), "{key}");
    }
    for plain in [
        "gpt-4o",
        "claude-sonnet-4-5-20250929",
        "org-team",
        "2024-06-01",
        "application/json",
        "abcdefabcdefabcdefabcdefabcdefabcdef",
        "sk-1",
    ] {
        assert!(!looks_like_secret(plain), "{plain}");
    }
}

/// Shadow caps are positive when set; the shadow gates are in range.
#[test]
fn shadow_caps_and_gates() {
    assert_one(
        violations(|p| p.shadow.as_mut().unwrap().max_requests_per_second = Some(0.0)),
        "shadow.max_requests_per_second",
        "above 0",
    );
    assert_one(
        violations(|p| p.shadow.as_mut().unwrap().max_tokens_per_minute = Some(0)),
        "shadow.max_tokens_per_minute",
        "positive",
    );
    assert_one(
        violations(|p| gates(p).min_shadow_similarity = Some(1.5)),
        "rollout.gates.min_shadow_similarity",
        "0 to 1",
    );
    assert_one(
        violations(|p| gates(p).max_shadow_schema_error_percent = Some(101.0)),
        "rollout.gates.max_shadow_schema_error_percent",
        "percentage",
    );
}

/// The rollout gates of the example policy, to change one.
fn gates(p: &mut Policy) -> &mut Gates {
    p.rollout.as_mut().unwrap().gates.as_mut().unwrap()
}

fn prices(input: f64, output: f64) -> crate::v1::Prices {
    crate::v1::Prices {
        input_per_million: Some(input),
        output_per_million: Some(output),
        ..Default::default()
    }
}

#[test]
fn prices_and_currency() {
    // Valid: backend prices, per-model prices, a currency.
    assert_eq!(
        violations(|p| {
            p.currency = "EUR".into();
            p.backends[0].prices = Some(prices(2.5, 8.0));
            p.backends[1]
                .model_prices
                .insert("gpt-4.1-mini".into(), prices(0.1, 0.42));
        }),
        Vec::<String>::new()
    );
    assert_one(
        violations(|p| p.currency = "usd".into()),
        "currency",
        "three capital letters",
    );
    assert_one(
        violations(|p| p.backends[0].prices = Some(prices(-1.0, 8.0))),
        "backends[0].prices.input_per_million",
        "must not be negative",
    );
    assert_one(
        violations(|p| p.backends[0].prices = Some(prices(2.5, f64::NAN))),
        "backends[0].prices.output_per_million",
        "finite",
    );
    assert_one(
        violations(|p| p.backends[0].prices = Some(prices(2.5, 0.0000001))),
        "backends[0].prices.output_per_million",
        "6 decimal places",
    );
    assert_one(
        violations(|p| {
            p.backends[0].prices = Some(crate::v1::Prices {
                output_per_million: Some(1.0),
                ..Default::default()
            })
        }),
        "backends[0].prices.input_per_million",
        "required",
    );
    assert_one(
        violations(|p| {
            p.backends[1]
                .model_prices
                .insert("gpt 4".into(), prices(1.0, 1.0));
        }),
        "backends[1].model_prices[\"gpt 4\"]",
        "model name",
    );
    assert_one(
        violations(|p| {
            let mut bad = prices(1.0, 1.0);
            bad.cache_write_per_million = Some(2e6);
            p.backends[1].model_prices.insert("m".into(), bad);
        }),
        "backends[1].model_prices[\"m\"].cache_write_per_million",
        "at most",
    );
}

#[test]
fn cost_gates() {
    let priced = |p: &mut Policy| {
        p.backends[0].prices = Some(prices(2.5, 8.0));
        p.backends[1]
            .model_prices
            .insert("m".into(), prices(0.1, 0.42));
    };
    assert_eq!(
        violations(|p| {
            priced(p);
            gates(p).max_cost_ratio = Some(1.2);
            gates(p).max_stage_spend = Some(50.0);
        }),
        Vec::<String>::new()
    );
    assert_one(
        violations(|p| {
            priced(p);
            gates(p).max_cost_ratio = Some(0.0);
        }),
        "rollout.gates.max_cost_ratio",
        "above 0",
    );
    assert_one(
        violations(|p| {
            priced(p);
            gates(p).max_cost_ratio = Some(f64::INFINITY);
        }),
        "rollout.gates.max_cost_ratio",
        "at most 1000",
    );
    assert_one(
        violations(|p| gates(p).max_stage_spend = Some(-1.0)),
        "rollout.gates.max_stage_spend",
        "above 0",
    );
    // The ratio needs prices on both sides.
    assert_one(
        violations(|p| {
            p.backends[0].prices = Some(prices(2.5, 8.0));
            gates(p).max_cost_ratio = Some(1.2);
        }),
        "rollout.gates.max_cost_ratio",
        "needs prices on the candidate backend",
    );
}

#[test]
fn hourly_spend_caps() {
    let priced = |p: &mut Policy| {
        for b in &mut p.backends {
            b.prices = Some(prices(1.0, 2.0));
        }
    };
    assert_eq!(
        violations(|p| {
            priced(p);
            p.traffic.as_mut().unwrap().max_candidate_spend_per_hour = Some(25.0);
            p.shadow.as_mut().unwrap().max_spend_per_hour = Some(5.0);
        }),
        Vec::<String>::new()
    );
    assert_one(
        violations(|p| {
            priced(p);
            p.traffic.as_mut().unwrap().max_candidate_spend_per_hour = Some(0.0);
        }),
        "traffic.max_candidate_spend_per_hour",
        "above 0",
    );
    assert_one(
        violations(|p| p.traffic.as_mut().unwrap().max_candidate_spend_per_hour = Some(25.0)),
        "traffic.max_candidate_spend_per_hour",
        "needs prices on the candidate backend",
    );
    assert_one(
        violations(|p| p.shadow.as_mut().unwrap().max_spend_per_hour = Some(f64::NAN)),
        "shadow.max_spend_per_hour",
        "above 0",
    );
}
