//! Entry points for the fuzz targets in `fuzz/` (coverage-guided, with
//! cargo-fuzz) and for the replay of their corpus in the tests: each takes
//! arbitrary bytes, drives one part of the agent that reads outside input,
//! and panics only when a rule below is broken.
//!
//! - [`policy`]: a policy as an operator or the control plane writes it.
//!   The shared validator accepts it or names the field and the rule; what
//!   it accepts loads in the agent and survives the protobuf JSON round
//!   trip unchanged.
//! - [`request`]: an app's request body on each model-call path. The bad-
//!   body check and the answer checks accept it or say why; a model
//!   mapping never breaks an accepted body; a translation between API
//!   families either gives a JSON object or refuses with a reason.
//! - [`sse`]: a backend's event stream. However it is cut into frames, the
//!   same events come out; the stream check and the translation of the
//!   events hold whatever the events say.
//! - [`answer`]: a backend's answer or error body, checked and turned back
//!   into the other API family.

use bytes::Bytes;
use shepherd_proto::v1;

use crate::api::{Api, SseEvents, StreamCheck, Usage};
use crate::policy::Backend;
use crate::translate::{self, Crossing, Refusal};

/// The APIs whose bodies the agent reads.
const MODEL_APIS: [Api; 5] = [
    Api::ChatCompletions,
    Api::Completions,
    Api::Embeddings,
    Api::Responses,
    Api::Messages,
];

/// One backend of each API family, as a policy would give them (made once:
/// the targets call for them on every input).
fn backends() -> &'static [Backend; 2] {
    static BACKENDS: std::sync::OnceLock<[Backend; 2]> = std::sync::OnceLock::new();
    BACKENDS.get_or_init(make_backends)
}

fn make_backends() -> [Backend; 2] {
    let p = serde_json::json!({
        "name": "fuzz", "match": {"path_prefix": "/"},
        "backends": [
            {"name": "openai", "base_url": "http://o.test", "protocol": "PROTOCOL_OPENAI",
             "model_map": {"gpt-4o": "gpt-4.1"}},
            {"name": "anthropic", "base_url": "http://a.test", "protocol": "PROTOCOL_ANTHROPIC",
             "model_map": {"*": "claude-sonnet-4-5"}}
        ],
        "traffic": {"baseline": "openai"}
    });
    match crate::policy::parse(&p.to_string()) {
        Ok(mut policies) => {
            let mut b = policies.remove(0).backends;
            let anthropic = b.remove(1);
            let openai = b.remove(0);
            [openai, anthropic]
        }
        Err(e) => panic!("the fuzzing policy does not load: {e}"),
    }
}

/// A policy: the validator's verdict, and what it accepts loads.
pub fn policy(data: &[u8]) {
    let Ok(policy) = serde_json::from_slice::<v1::Policy>(data) else {
        return;
    };
    match shepherd_proto::validate::validate_policy(&policy, None) {
        Ok(()) => {
            if let Err(e) = crate::policy::Policy::try_from(&policy) {
                panic!("a policy the validator accepts does not load: {e}");
            }
            let json = serde_json::to_string(&policy).unwrap_or_else(|e| panic!("{e}"));
            let back: v1::Policy = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, policy, "the JSON round trip changed the policy");
        }
        Err(e) => {
            assert!(!e.violations.is_empty(), "a refusal with no rule");
            for v in &e.violations {
                assert!(
                    !v.field.is_empty() && !v.rule.is_empty(),
                    "a refusal that names no field or no rule: {v}"
                );
            }
        }
    }
}

/// An app's request body on every model-call path.
pub fn request(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    if let Err(why) = crate::api::check_request(data) {
        assert!(!why.is_empty(), "a bad body refused with no reason");
    }
    let json_object = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .is_some_and(|v| v.is_object());
    let [openai, anthropic] = backends();
    for api in MODEL_APIS {
        let _ = crate::api::check_document(api, data, None, &mut Usage::default());
        for backend in [openai, anthropic] {
            if translate::crosses(api, backend.protocol) {
                match translate::request(api, data, backend) {
                    Ok(t) => {
                        let v: serde_json::Value = serde_json::from_slice(&t.body)
                            .unwrap_or_else(|e| panic!("a translation that is not JSON: {e}"));
                        assert!(v.is_object(), "a translation that is not an object");
                    }
                    Err(Refusal::Invalid(e)) => {
                        assert!(!e.to_string().is_empty(), "an empty refusal")
                    }
                    Err(Refusal::Untranslatable { field, message }) => {
                        // The field may be the empty key; the message names it.
                        assert!(
                            !message.is_empty() && message.contains(field.as_str()),
                            "an untranslatable field the refusal does not name: {field:?}: {message}"
                        )
                    }
                }
            } else {
                let f = crate::model::for_backend(backend, api, &body);
                if json_object {
                    let v: serde_json::Result<serde_json::Value> = serde_json::from_slice(&f.body);
                    assert!(v.is_ok(), "the model mapping broke a JSON body");
                }
            }
        }
    }
}

/// The crossings answers are turned back through.
fn crossings() -> [Crossing; 2] {
    [
        Crossing {
            app: Api::ChatCompletions,
            backend: Api::Messages,
            json_tool: None,
            include_usage: true,
        },
        Crossing {
            app: Api::Messages,
            backend: Api::ChatCompletions,
            json_tool: None,
            include_usage: false,
        },
    ]
}

/// Events of `data` fed in frames cut at `cuts` (offsets, in order).
fn events(data: &[u8], cuts: &[usize]) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut sse = SseEvents::default();
    let mut push =
        |name: Option<&[u8]>, data: &[u8]| out.push((name.map(<[u8]>::to_vec), data.to_vec()));
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        let cut = cut.clamp(at, data.len());
        sse.feed(&data[at..cut], &mut push);
        at = cut;
    }
    sse.finish(&mut push);
    out
}

/// A backend's event stream: the first byte chooses where the rest is cut
/// into frames.
pub fn sse(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = events(stream, &[]);
    let step = usize::from(seed % 17) + 1;
    let cuts: Vec<usize> = (step..stream.len()).step_by(step).collect();
    assert_eq!(
        events(stream, &cuts),
        whole,
        "cutting the stream into frames changed its events"
    );
    for api in [Api::ChatCompletions, Api::Messages, Api::Completions] {
        let mut check = StreamCheck::new(api);
        let mut text = String::new();
        for (name, data) in &whole {
            check.event(name.as_deref(), data, Some(&mut text));
        }
        let _ = check.verdict();
    }
    for c in crossings() {
        let mut t = translate::Stream::new(&c);
        let mut out = Vec::new();
        for (name, data) in &whole {
            t.event(name.as_deref(), data, &mut out);
        }
    }
}

/// A backend's answer and error body, checked and turned back.
pub fn answer(data: &[u8]) {
    for api in MODEL_APIS {
        let _ = crate::api::check_document(api, data, None, &mut Usage::default());
    }
    let _ = crate::api::ErrorBody::parse(data);
    for c in crossings() {
        if let Ok(out) = translate::answer(&c, data, Some("m"), &mut Usage::default()) {
            let v: serde_json::Value = serde_json::from_slice(&out)
                .unwrap_or_else(|e| panic!("a translated answer that is not JSON: {e}"));
            assert!(v.is_object(), "a translated answer that is not an object");
        }
        for status in [400u16, 429, 500, 529] {
            let status = http::StatusCode::from_u16(status).unwrap_or_default();
            let (_, body) = translate::error(&c, status, data);
            let v: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("a translated error that is not JSON: {e}"));
            assert!(v.is_object(), "a translated error that is not an object");
        }
    }
}
