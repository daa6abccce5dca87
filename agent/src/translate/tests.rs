//! Table-driven tests of every mapping, and round trips of random requests
//! and answers.

use serde_json::{Value, json};

use super::*;

pub(super) fn backend(protocol: &str, mut extra: Value) -> Backend {
    extra["protocol"] = json!(protocol);
    crate::policy::test_backend(extra)
}

fn anthropic() -> Backend {
    backend("PROTOCOL_ANTHROPIC", json!({}))
}

fn openai() -> Backend {
    backend("PROTOCOL_OPENAI", json!({}))
}

fn to_anthropic(request: Value) -> Result<Value, Refusal> {
    let t = super::request(
        Api::ChatCompletions,
        request.to_string().as_bytes(),
        &anthropic(),
    )?;
    Ok(serde_json::from_slice(&t.body).unwrap())
}

fn to_openai(request: Value) -> Result<Value, Refusal> {
    let t = super::request(Api::Messages, request.to_string().as_bytes(), &openai())?;
    Ok(serde_json::from_slice(&t.body).unwrap())
}

fn refused(r: Result<Value, Refusal>) -> String {
    match r.unwrap_err() {
        Refusal::Invalid(e) => format!("invalid: {e}"),
        Refusal::Untranslatable { message, .. } => format!("untranslatable: {message}"),
    }
}

/// OpenAI requests become Messages requests, field by field.
#[test]
fn openai_requests_to_anthropic() {
    let user = json!({"role": "user", "content": "Hi"});
    for (request, want) in [
        // The system prompt, a default max_tokens.
        (
            json!({"model": "m", "messages": [{"role": "system", "content": "Be brief."}, user]}),
            json!({"model": "m", "system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4096}),
        ),
        // Developer and system messages together: text blocks in order.
        (
            json!({"messages": [{"role": "developer", "content": "A"}, {"role": "system", "content": [{"type": "text", "text": "B"}]}, user]}),
            json!({"system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4096}),
        ),
        // Content parts: text, a base64 image and an image by URL.
        (
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "auto"}}]}]}),
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]}], "max_tokens": 4096}),
        ),
        // A tool round trip: calls (ids kept, arguments as objects) and
        // their results gathered into one user message.
        (
            json!({"messages": [user,
                {"role": "assistant", "content": "Looking.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": ""}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
                {"role": "user", "content": "Thanks"}]}),
            json!({"messages": [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "time", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "Sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "noon"}]}]},
                {"role": "user", "content": "Thanks"}], "max_tokens": 4096}),
        ),
        // Tools, a forced function, no parallel calls.
        (
            json!({"messages": [user], "tools": [
                {"type": "function", "function": {"name": "weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "time"}}],
                "tool_choice": {"type": "function", "function": {"name": "weather"}}, "parallel_tool_calls": false}),
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4096, "tools": [
                {"name": "weather", "description": "Weather now", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "time", "input_schema": {"type": "object", "properties": {}}}],
                "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": true}}),
        ),
        (
            json!({"messages": [user], "tool_choice": "required"}),
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4096, "tool_choice": {"type": "any"}}),
        ),
        (
            json!({"messages": [user], "tool_choice": "none", "parallel_tool_calls": true}),
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4096, "tool_choice": {"type": "none", "disable_parallel_tool_use": false}}),
        ),
        // Sampling, limits, user, stream; max_completion_tokens wins.
        (
            json!({"messages": [user], "stop": "END", "temperature": 0.5, "top_p": 0.9, "max_tokens": 10,
                   "max_completion_tokens": 20, "user": "u-1", "stream": true, "stream_options": {"include_usage": true},
                   "n": 1, "logprobs": false, "presence_penalty": 0}),
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20, "stop_sequences": ["END"],
                   "temperature": 0.5, "top_p": 0.9, "stream": true, "metadata": {"user_id": "u-1"}}),
        ),
        // JSON output: a forced tool whose input is the answer.
        (
            json!({"messages": [user], "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": {"type": "object", "properties": {"name": {"type": "string"}}}}}}),
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4096,
                   "tools": [{"name": "person", "description": "Give the answer as this tool's input.", "input_schema": {"type": "object", "properties": {"name": {"type": "string"}}}}],
                   "tool_choice": {"type": "tool", "name": "person"}}),
        ),
        (
            json!({"messages": [user], "response_format": {"type": "json_object"}}),
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4096,
                   "tools": [{"name": "json_answer", "description": "Give the answer as this tool's input.", "input_schema": {"type": "object"}}],
                   "tool_choice": {"type": "tool", "name": "json_answer"}}),
        ),
    ] {
        assert_eq!(to_anthropic(request.clone()).unwrap(), want, "{request}");
    }
}

/// What has no counterpart in Anthropic's API is refused with a message
/// naming the field; the app's own mistakes are named too.
#[test]
fn openai_requests_refused() {
    let user = json!({"role": "user", "content": "Hi"});
    for (request, want) in [
        (
            json!({"messages": [user], "n": 2}),
            "untranslatable: n: has no counterpart in Anthropic's Messages API (backend \"b\" speaks Anthropic's Messages API; set drop_unsupported on it to drop such fields)",
        ),
        (
            json!({"messages": [user], "logprobs": true}),
            "untranslatable: logprobs: has no counterpart",
        ),
        (
            json!({"messages": [user], "audio": {"voice": "alloy"}}),
            "untranslatable: audio: has no counterpart",
        ),
        (
            json!({"messages": [user], "seed": 7}),
            "untranslatable: seed: has no counterpart",
        ),
        (
            json!({"messages": [user], "temperature": 1.5}),
            "untranslatable: temperature: above 1",
        ),
        (
            json!({"messages": [{"role": "user", "content": "Hi", "name": "bob"}]}),
            "untranslatable: messages[0].name: has no counterpart",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}]}]}),
            "untranslatable: messages[0].content[0].image_url.detail",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
            "untranslatable: messages[0].content[0].type \"input_audio\"",
        ),
        (
            json!({"messages": [user], "tools": [{"type": "function", "function": {"name": "f", "strict": true}}]}),
            "untranslatable: tools[0].function.strict",
        ),
        (json!({"model": "m"}), "invalid: messages: required"),
        (
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            "invalid: messages[0].role: must be system, developer, user, assistant or tool",
        ),
        (
            json!({"messages": [{"role": "user", "content": 7}]}),
            "invalid: messages[0].content: must be a string or a list of parts",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "invalid: messages[0].tool_call_id: required",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]}),
            "invalid: messages[0].tool_calls[0].function.arguments: must hold a JSON object",
        ),
        (
            json!({"messages": [user], "max_tokens": -1}),
            "invalid: max_tokens: must be a whole number of at least 0",
        ),
        (
            json!({"messages": [user], "tools": [{"type": "function", "function": {"name": "f"}}], "response_format": {"type": "json_object"}}),
            "invalid: response_format: cannot cross to Anthropic's Messages API together with tools",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}),
            "invalid: messages[0].content[0].image_url.url: must be an http(s) URL or a data: URL",
        ),
    ] {
        let got = refused(to_anthropic(request.clone()));
        assert!(got.starts_with(want), "{request}: {got}");
    }
    let e = super::request(Api::ChatCompletions, b"{not json", &anthropic()).unwrap_err();
    assert!(matches!(e, Refusal::Invalid(_)));
}

/// With drop_unsupported, such fields are dropped and each is listed.
#[test]
fn drops_what_has_no_counterpart_when_asked() {
    let b = backend(
        "PROTOCOL_ANTHROPIC",
        json!({"drop_unsupported": true, "default_max_tokens": 100}),
    );
    let request = json!({"messages": [{"role": "user", "content": "Hi", "name": "bob"}], "n": 2, "seed": 1, "temperature": 1.5});
    let t = super::request(Api::ChatCompletions, request.to_string().as_bytes(), &b).unwrap();
    let fields: Vec<&str> = t.dropped.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["messages[0].name", "n", "seed", "temperature"]);
    let body: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(
        body,
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100})
    );
}

/// The backend's model map applies across APIs; the app's model is kept
/// for the answer.
#[test]
fn maps_models_across_apis() {
    let b = backend(
        "PROTOCOL_ANTHROPIC",
        json!({"model_map": {"gpt-4o": "claude-sonnet-4-5"}}),
    );
    let request = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]});
    let t = super::request(Api::ChatCompletions, request.to_string().as_bytes(), &b).unwrap();
    let body: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(t.requested_model.as_deref(), Some("gpt-4o"));
    assert_eq!(
        t.crossing,
        Crossing {
            app: Api::ChatCompletions,
            backend: Api::Messages,
            json_tool: None,
            include_usage: false
        }
    );
}

/// Messages requests become OpenAI requests, field by field.
#[test]
fn anthropic_requests_to_openai() {
    for (request, want) in [
        (
            json!({"model": "m", "max_tokens": 50, "system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}]}),
            json!({"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_completion_tokens": 50}),
        ),
        (
            json!({"max_tokens": 5, "system": [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}], "messages": [
                {"role": "user", "content": [{"type": "text", "text": "See"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]}),
            json!({"messages": [{"role": "system", "content": [{"type": "text", "text": "A"}]},
                {"role": "user", "content": [{"type": "text", "text": "See"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}], "max_completion_tokens": 5}),
        ),
        (
            json!({"max_tokens": 5, "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "noon"}]},
                    {"type": "text", "text": "And?"}]}]}),
            json!({"messages": [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "time", "arguments": "{}"}}]},
                {"role": "tool", "content": "Sunny", "tool_call_id": "toolu_1"},
                {"role": "tool", "content": [{"type": "text", "text": "noon"}], "tool_call_id": "toolu_2"},
                {"role": "user", "content": [{"type": "text", "text": "And?"}]}], "max_completion_tokens": 5}),
        ),
        (
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],
                   "tools": [{"name": "weather", "description": "Weather now", "input_schema": {"type": "object"}}],
                   "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                   "stop_sequences": ["a", "b"], "temperature": 0.2, "top_p": 1, "stream": true, "metadata": {"user_id": "u"}}),
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 5, "temperature": 0.2, "top_p": 1,
                   "stop": ["a", "b"], "stream": true, "stream_options": {"include_usage": true},
                   "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather now", "parameters": {"type": "object"}}}],
                   "tool_choice": "required", "parallel_tool_calls": false, "user": "u"}),
        ),
        (
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}], "tool_choice": {"type": "tool", "name": "f"}}),
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 5,
                   "tool_choice": {"type": "function", "function": {"name": "f"}}}),
        ),
    ] {
        assert_eq!(to_openai(request.clone()).unwrap(), want, "{request}");
    }
}

/// What has no counterpart in OpenAI's API is refused, naming the field.
#[test]
fn anthropic_requests_refused() {
    let user = json!({"role": "user", "content": "Hi"});
    for (request, want) in [
        (
            json!({"max_tokens": 5, "messages": [user], "top_k": 5}),
            "untranslatable: top_k: has no counterpart in OpenAI's chat completions",
        ),
        (
            json!({"max_tokens": 5, "messages": [user], "thinking": {"type": "enabled", "budget_tokens": 1024}}),
            "untranslatable: thinking",
        ),
        (
            json!({"max_tokens": 5, "messages": [user], "stop_sequences": ["a", "b", "c", "d", "e"]}),
            "untranslatable: stop_sequences: more than 4",
        ),
        (
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x", "is_error": true}]}]}),
            "untranslatable: messages[0].content[0].is_error",
        ),
        (
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
            "untranslatable: messages[0].content[0].type \"document\"",
        ),
        (
            json!({"max_tokens": 5, "messages": [user], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "untranslatable: tools[0].type \"web_search_20250305\"",
        ),
        (
            json!({"max_tokens": 5, "messages": [user], "metadata": {"user_id": "u", "x": 1}}),
            "untranslatable: metadata.x",
        ),
        (json!({"messages": [user]}), "invalid: max_tokens: required"),
        (json!({"max_tokens": 5}), "invalid: messages: required"),
        (
            json!({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
            "invalid: messages[0].role: must be user or assistant",
        ),
        (
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]}),
            "invalid: messages[0].content[0].source.type: must be \"base64\" or \"url\"",
        ),
    ] {
        let got = refused(to_openai(request.clone()));
        assert!(got.starts_with(want), "{request}: {got}");
    }
}

fn crossing(app: Api) -> Crossing {
    Crossing {
        app,
        backend: if app == Api::Messages {
            Api::ChatCompletions
        } else {
            Api::Messages
        },
        json_tool: None,
        include_usage: true,
    }
}

fn answer_json(c: &Crossing, body: Value, model: Option<&str>) -> Value {
    let out = super::answer(c, body.to_string().as_bytes(), model, &mut Usage::default()).unwrap();
    serde_json::from_slice(&out).unwrap()
}

fn answer_err(c: &Crossing, body: &Value) -> String {
    super::answer(c, body.to_string().as_bytes(), None, &mut Usage::default())
        .unwrap_err()
        .0
}

/// Anthropic answers become chat completions: text, tool calls, stop
/// reasons and usage with cached tokens.
#[test]
fn anthropic_answers_to_openai() {
    let c = crossing(Api::ChatCompletions);
    let a = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Let me "}, {"type": "text", "text": "check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 3}});
    let mut got = answer_json(&c, a.clone(), None);
    assert!(got["created"].as_u64().unwrap() > 1_700_000_000);
    got["created"] = json!(0);
    assert_eq!(
        got,
        json!({"id": "msg_1", "object": "chat.completion", "created": 0, "model": "claude-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Let me check.", "refusal": null,
                "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 103, "completion_tokens": 5, "total_tokens": 108, "prompt_tokens_details": {"cached_tokens": 90}}})
    );
    assert_eq!(answer_json(&c, a, Some("gpt-4o"))["model"], "gpt-4o");
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("pause_turn", "stop"),
    ] {
        let a = json!({"type": "message", "role": "assistant", "content": [{"type": "text", "text": "x"}], "stop_reason": stop});
        assert_eq!(
            answer_json(&c, a, None)["choices"][0]["finish_reason"],
            finish,
            "{stop}"
        );
    }
    // A refusal's text is the message's refusal.
    let a = json!({"type": "message", "role": "assistant", "content": [{"type": "text", "text": "I can't."}], "stop_reason": "refusal"});
    let got = answer_json(&c, a, None);
    assert_eq!(got["choices"][0]["message"]["refusal"], "I can't.");
    assert_eq!(got["choices"][0]["message"]["content"], Value::Null);
    // The JSON tool's input is the content.
    let c = Crossing {
        json_tool: Some("person".into()),
        ..c
    };
    let a = json!({"type": "message", "role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "person", "input": {"name": "Ada"}}], "stop_reason": "tool_use"});
    let got = answer_json(&c, a, None);
    assert_eq!(
        got["choices"][0]["message"]["content"],
        "{\"name\":\"Ada\"}"
    );
    assert_eq!(got["choices"][0]["finish_reason"], "stop");
    assert!(got["choices"][0]["message"].get("tool_calls").is_none());
    // An answer that is not a valid message is malformed, as the answer
    // check says.
    assert_eq!(
        answer_err(
            &c,
            &json!({"type": "message", "role": "assistant", "content": [], "stop_reason": "end_turn"})
        ),
        "content: must be a non-empty list"
    );
    assert!(answer_err(&c, &json!({"content": 5})).contains("content"));
}

/// Chat completions become Anthropic answers.
#[test]
fn openai_answers_to_anthropic() {
    let c = crossing(Api::Messages);
    let a = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Checking.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107, "prompt_tokens_details": {"cached_tokens": 60}}});
    assert_eq!(
        answer_json(&c, a, None),
        json!({"id": "chatcmpl-1", "type": "message", "role": "assistant", "model": "gpt-x",
            "content": [{"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 40, "output_tokens": 7, "cache_read_input_tokens": 60, "cache_creation_input_tokens": 0}})
    );
    for (finish, stop) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
    ] {
        let a = json!({"choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": finish}]});
        assert_eq!(answer_json(&c, a, None)["stop_reason"], stop, "{finish}");
    }
    let bad = json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}, "finish_reason": "tool_calls"}]});
    assert_eq!(
        answer_err(&c, &bad),
        "the answer cannot be translated: choices[0].message.tool_calls[0].function.arguments: must hold a JSON object to cross to Anthropic's Messages API"
    );
}

/// Errors keep their status (529 and 503 trade places), take the app's
/// shape, and their message keeps the backend's own type.
#[test]
fn errors_cross_both_ways() {
    let to_openai_app = crossing(Api::ChatCompletions);
    let (status, body) = super::error(
        &to_openai_app,
        StatusCode::from_u16(529).unwrap(),
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["message"], "overloaded_error: Overloaded");
    assert_eq!(v["error"]["type"], "overloaded_error");
    let (_, body) = super::error(
        &to_openai_app,
        StatusCode::BAD_REQUEST,
        br#"{"type":"error","error":{"type":"billing_error","message":"Your credit balance is too low"}}"#,
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "insufficient_quota");

    let to_anthropic_app = crossing(Api::Messages);
    for (status, body, want_status, want_type, want_message) in [
        (
            503,
            r#"{"error":{"message":"busy","type":"server_error"}}"#,
            529,
            "overloaded_error",
            "server_error: busy",
        ),
        (
            401,
            r#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}}"#,
            401,
            "authentication_error",
            "invalid_api_key: Incorrect API key",
        ),
        (
            429,
            r#"{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
            429,
            "billing_error",
            "insufficient_quota: quota",
        ),
        (
            429,
            r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
            429,
            "rate_limit_error",
            "rate_limit_exceeded: slow down",
        ),
        (
            404,
            r#"{"error":{"message":"no such model","code":"model_not_found"}}"#,
            404,
            "not_found_error",
            "model_not_found: no such model",
        ),
        (
            500,
            "<html>oops</html>",
            500,
            "api_error",
            "<html>oops</html>",
        ),
        (502, "", 502, "api_error", "HTTP 502"),
    ] {
        let (s, b) = super::error(
            &to_anthropic_app,
            StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(s.as_u16(), want_status, "{body}");
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], want_type, "{body}");
        assert_eq!(v["error"]["message"], want_message, "{body}");
    }
}

/// Refusals answer in the app's shape, naming the field.
#[test]
fn refusals_answer_in_the_apps_shape() {
    let r = Refusal::Untranslatable {
        field: "n".into(),
        message: "n: has no counterpart".into(),
    };
    let v: Value = serde_json::from_slice(&r.answer(Dialect::OpenAi)).unwrap();
    assert_eq!(v["error"]["param"], "n");
    assert_eq!(v["error"]["code"], "unsupported_parameter");
    let v: Value = serde_json::from_slice(&r.answer(Dialect::Anthropic)).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["message"], "n: has no counterpart");
}

fn events(body: &[u8]) -> Vec<(Option<String>, Value)> {
    let mut all = Vec::new();
    let mut sse = crate::api::SseEvents::default();
    let mut on = |name: Option<&[u8]>, data: &[u8]| {
        let name = name.map(|n| String::from_utf8_lossy(n).into_owned());
        let data = if data == b"[DONE]" {
            json!("[DONE]")
        } else {
            serde_json::from_slice(data).unwrap()
        };
        all.push((name, data));
    };
    sse.feed(body, &mut on);
    sse.finish(&mut on);
    all
}

const ANTHROPIC_STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\":\"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\\\"lo\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"weather\",\"input\":{}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":12}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

/// An Anthropic stream becomes OpenAI chunks, event by event: the role,
/// text and tool-call argument deltas, the finish reason, usage (asked
/// for), then [DONE].
#[test]
fn anthropic_streams_to_openai_chunks() {
    let c = crossing(Api::ChatCompletions);
    let out = openai_app::whole_stream(&c, ANTHROPIC_STREAM.as_bytes());
    let all = events(&out);
    let deltas: Vec<Value> = all
        .iter()
        .filter_map(|(_, d)| {
            d.get("choices")
                .and_then(|c| c.get(0))
                .map(|c| json!([c["delta"], c["finish_reason"]]))
        })
        .collect();
    assert_eq!(
        deltas,
        [
            json!([{"role": "assistant", "content": ""}, null]),
            json!([{"content": "Hel\"lo"}, null]),
            json!([{"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}, null]),
            json!([{"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}, null]),
            json!([{"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}, null]),
            json!([{}, "tool_calls"]),
        ]
    );
    for (_, d) in &all[..all.len() - 1] {
        assert_eq!(d["id"], "msg_1");
        assert_eq!(d["model"], "claude-x");
        assert_eq!(d["object"], "chat.completion.chunk");
    }
    let usage = &all[all.len() - 2].1;
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 15, "completion_tokens": 12, "total_tokens": 27, "prompt_tokens_details": {"cached_tokens": 5}})
    );
    assert_eq!(all.last().unwrap().1, json!("[DONE]"));
    // Without include_usage there is no usage chunk; every event passes
    // through the stream's own check as valid OpenAI chunks.
    let c = Crossing {
        include_usage: false,
        ..c
    };
    let out = openai_app::whole_stream(&c, ANTHROPIC_STREAM.as_bytes());
    assert!(!String::from_utf8_lossy(&out).contains("usage"));
    let inspected = crate::shadow::inspect(Api::ChatCompletions, 200, true, &out, true);
    assert_eq!(
        inspected.outcome,
        crate::outcome::Outcome::Ok,
        "{inspected:?}"
    );
    assert_eq!(inspected.text, "Hel\"lo");
    // An error event becomes an OpenAI error chunk.
    let out = openai_app::whole_stream(
        &c,
        b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    assert_eq!(
        events(&out)[0].1,
        json!({"error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
}

const OPENAI_STREAM: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi \"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"there\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-x\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":9,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n\
data: [DONE]\n\n";

/// An OpenAI stream becomes Anthropic events: message_start, text and
/// tool_use blocks with their deltas, message_delta with the stop reason
/// and usage, message_stop.
#[test]
fn openai_streams_to_anthropic_events() {
    let out = anthropic_app::whole_stream(OPENAI_STREAM.as_bytes());
    let all = events(&out);
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, data) in &all {
        assert_eq!(data["type"], name.as_deref().unwrap());
    }
    assert_eq!(all[0].1["message"]["id"], "chatcmpl-1");
    assert_eq!(all[0].1["message"]["model"], "gpt-x");
    assert_eq!(
        all[2].1["delta"],
        json!({"type": "text_delta", "text": "Hi "})
    );
    assert_eq!(
        all[5].1["content_block"],
        json!({"type": "tool_use", "id": "call_1", "name": "weather", "input": {}})
    );
    assert_eq!(all[5].1["index"], 1);
    assert_eq!(
        all[6].1["delta"],
        json!({"type": "input_json_delta", "partial_json": "{\"city\":"})
    );
    assert_eq!(
        all[9].1["delta"],
        json!({"stop_reason": "tool_use", "stop_sequence": null})
    );
    assert_eq!(
        all[9].1["usage"],
        json!({"input_tokens": 12, "output_tokens": 9, "cache_read_input_tokens": 8, "cache_creation_input_tokens": 0})
    );
    let inspected = crate::shadow::inspect(Api::Messages, 200, true, &out, true);
    assert_eq!(
        inspected.outcome,
        crate::outcome::Outcome::Ok,
        "{inspected:?}"
    );
    assert_eq!(inspected.text, "Hi there");
    // Translated event by event: a stream fed in small pieces gives the
    // same events.
    let mut s = anthropic_app::Stream::default();
    let mut pieces = Vec::new();
    let mut sse = crate::api::SseEvents::default();
    for piece in OPENAI_STREAM.as_bytes().chunks(5) {
        sse.feed(piece, |n, d| s.event(n, d, &mut pieces));
    }
    assert_eq!(pieces, out);
    // An error chunk becomes an error event.
    let out = anthropic_app::whole_stream(
        b"data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n",
    );
    assert_eq!(
        events(&out)[0],
        (
            Some("error".into()),
            json!({"type": "error", "error": {"message": "boom", "type": "server_error"}})
        )
    );
}

/// Random requests and answers: every translation reads back as a valid
/// document of the other API, and the lossless shapes come back equal
/// after a round trip.
mod roundtrip {
    use std::borrow::Cow;

    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};

    use crate::api::anthropic::messages as an;
    use crate::api::openai::chat as oa;
    use crate::api::parse::{Raw, Str, Unsupported, document};
    use crate::json::Writer;
    use crate::translate::{anthropic_app, openai_app};

    const CASES: u64 = 500;

    fn text(rng: &mut SmallRng) -> Str<'static> {
        const PIECES: [&str; 10] = [
            "hi", " ", "\"q\"", "\\", "\n", "é", "日本", "{x}", "\t", "</s>",
        ];
        let n = rng.random_range(1..6);
        let s: String = (0..n)
            .map(|_| PIECES[rng.random_range(0..PIECES.len())])
            .collect();
        Str::from_text(&s)
    }

    fn name(rng: &mut SmallRng) -> Str<'static> {
        Str::from_text(&format!("f{}", rng.random_range(0..100)))
    }

    fn object(rng: &mut SmallRng) -> Raw<'static> {
        let mut w = Writer::default();
        w.begin_object();
        for i in 0..rng.random_range(0..3) {
            w.key(["a", "b", "c"][i]);
            match rng.random_range(0..3) {
                0 => {
                    text(rng).write(&mut w);
                }
                1 => {
                    w.u64(rng.random_range(0..1000));
                }
                _ => {
                    w.begin_array().bool(true).null().end_array();
                }
            }
        }
        w.end_object();
        Raw(Cow::Owned(w.finish()))
    }

    fn number(rng: &mut SmallRng) -> Option<Raw<'static>> {
        rng.random_bool(0.5).then(|| {
            Raw(Cow::Owned(
                format!("0.{}", rng.random_range(0..10)).into_bytes(),
            ))
        })
    }

    fn image_url(rng: &mut SmallRng) -> Str<'static> {
        if rng.random_bool(0.5) {
            Str::from_text("data:image/png;base64,iVBORw0KGgo+/A==")
        } else {
            Str::from_text(&format!(
                "https://example.com/{}.jpg",
                rng.random_range(0..9)
            ))
        }
    }

    /// An OpenAI request of the shapes that cross and come back unchanged.
    fn openai_request(rng: &mut SmallRng) -> oa::Request<'static> {
        let mut q = oa::Request {
            model: Some(Str::from_text("gpt-x")),
            max_completion_tokens: Some(rng.random_range(1..5000)),
            temperature: number(rng),
            top_p: number(rng),
            user: rng.random_bool(0.3).then(|| text(rng)),
            ..oa::Request::default()
        };
        q.stream = [None, Some(false), Some(true)][rng.random_range(0..3)];
        q.include_usage = (q.stream == Some(true)).then_some(true);
        q.stop = (0..rng.random_range(0..5)).map(|_| text(rng)).collect();
        q.tools = (0..rng.random_range(0..3))
            .map(|_| oa::Tool {
                name: name(rng),
                description: rng.random_bool(0.5).then(|| text(rng)),
                parameters: Some(object(rng)),
            })
            .collect();
        if rng.random_bool(0.5) {
            q.tool_choice = Some(match rng.random_range(0..4) {
                0 => oa::ToolChoice::Auto,
                1 => oa::ToolChoice::None,
                2 => oa::ToolChoice::Required,
                _ => oa::ToolChoice::Function(name(rng)),
            });
            q.parallel_tool_calls = [None, Some(true), Some(false)][rng.random_range(0..3)];
        }
        let msg = |role, content| oa::Message {
            role,
            content,
            tool_calls: Vec::new(),
            tool_call_id: None,
        };
        match rng.random_range(0..3) {
            0 => q
                .messages
                .push(msg(oa::Role::System, oa::Content::Text(text(rng)))),
            1 => q.messages.push(msg(
                oa::Role::System,
                oa::Content::Parts((0..2).map(|_| oa::Part::Text(text(rng))).collect()),
            )),
            _ => {}
        }
        for _ in 0..rng.random_range(1..6) {
            match rng.random_range(0..3) {
                0 => q
                    .messages
                    .push(msg(oa::Role::User, oa::Content::Text(text(rng)))),
                1 => {
                    let parts = (0..rng.random_range(1..4))
                        .map(|_| {
                            if rng.random_bool(0.5) {
                                oa::Part::Text(text(rng))
                            } else {
                                oa::Part::Image(image_url(rng))
                            }
                        })
                        .collect();
                    q.messages
                        .push(msg(oa::Role::User, oa::Content::Parts(parts)));
                }
                _ => {
                    let calls: Vec<oa::ToolCall<'static>> = (0..rng.random_range(0..3))
                        .map(|i| oa::ToolCall {
                            id: Str::from_text(&format!("call_{i}")),
                            name: name(rng),
                            arguments: Str::of_json(object(rng).bytes()),
                        })
                        .collect();
                    let content = match (calls.is_empty(), rng.random_range(0..3)) {
                        (false, 0) => oa::Content::None,
                        (_, 1) => {
                            oa::Content::Parts((0..2).map(|_| oa::Part::Text(text(rng))).collect())
                        }
                        _ => oa::Content::Text(text(rng)),
                    };
                    let ids: Vec<Str<'static>> = calls.iter().map(|c| c.id.clone()).collect();
                    q.messages.push(oa::Message {
                        role: oa::Role::Assistant,
                        content,
                        tool_calls: calls,
                        tool_call_id: None,
                    });
                    for id in ids {
                        let content = if rng.random_bool(0.5) {
                            oa::Content::Text(text(rng))
                        } else {
                            oa::Content::Parts(vec![oa::Part::Text(text(rng))])
                        };
                        q.messages.push(oa::Message {
                            role: oa::Role::Tool,
                            content,
                            tool_calls: Vec::new(),
                            tool_call_id: Some(id),
                        });
                    }
                }
            }
        }
        q
    }

    /// An Anthropic request of the shapes that cross and come back
    /// unchanged.
    fn anthropic_request(rng: &mut SmallRng) -> an::Request<'static> {
        let mut q = an::Request {
            model: Some(Str::from_text("claude-x")),
            max_tokens: Some(rng.random_range(1..5000)),
            temperature: number(rng),
            top_p: number(rng),
            stream: [None, Some(false), Some(true)][rng.random_range(0..3)],
            user_id: rng.random_bool(0.3).then(|| text(rng)),
            ..an::Request::default()
        };
        q.system = match rng.random_range(0..3) {
            0 => Some(an::System::Text(text(rng))),
            1 => Some(an::System::Blocks(
                (0..rng.random_range(1..3)).map(|_| text(rng)).collect(),
            )),
            _ => None,
        };
        q.stop_sequences = (0..rng.random_range(0..5)).map(|_| text(rng)).collect();
        q.tools = (0..rng.random_range(0..3))
            .map(|_| an::Tool {
                name: name(rng),
                description: rng.random_bool(0.5).then(|| text(rng)),
                input_schema: object(rng),
            })
            .collect();
        if rng.random_bool(0.5) {
            q.tool_choice = Some(an::ToolChoice {
                kind: match rng.random_range(0..4) {
                    0 => an::Choice::Auto,
                    1 => an::Choice::None,
                    2 => an::Choice::Any,
                    _ => an::Choice::Tool(name(rng)),
                },
                disable_parallel_tool_use: [None, Some(true), Some(false)][rng.random_range(0..3)],
            });
        }
        let mut results_last = false;
        for _ in 0..rng.random_range(1..6) {
            let (role, content) = match rng.random_range(0..3) {
                0 => (an::Role::User, an::Content::Text(text(rng))),
                1 => {
                    let blocks = (0..rng.random_range(1..4))
                        .map(|_| {
                            if rng.random_bool(0.5) {
                                an::Block::Text(text(rng))
                            } else if rng.random_bool(0.5) {
                                an::Block::Image(an::Image::Url(Str::from_text(
                                    "https://example.com/a.png",
                                )))
                            } else {
                                an::Block::Image(an::Image::Base64 {
                                    media_type: Str::from_text("image/jpeg"),
                                    data: Str::from_text("/9j/4AAQ+"),
                                })
                            }
                        })
                        .collect();
                    (an::Role::User, an::Content::Blocks(blocks))
                }
                _ => {
                    let texts = rng.random_range(0..3);
                    let uses = rng.random_range(usize::from(texts < 2)..3);
                    let mut blocks: Vec<an::Block<'static>> =
                        (0..texts).map(|_| an::Block::Text(text(rng))).collect();
                    for i in 0..uses {
                        blocks.push(an::Block::ToolUse {
                            id: Str::from_text(&format!("toolu_{i}")),
                            name: name(rng),
                            input: object(rng),
                        });
                    }
                    let content = if texts == 1 && uses == 0 {
                        an::Content::Text(text(rng))
                    } else {
                        an::Content::Blocks(blocks)
                    };
                    q.messages.push(an::Message {
                        role: an::Role::Assistant,
                        content,
                    });
                    results_last = false;
                    if uses > 0 {
                        let results = (0..uses)
                            .map(|i| an::Block::ToolResult {
                                tool_use_id: Str::from_text(&format!("toolu_{i}")),
                                content: if rng.random_bool(0.5) {
                                    an::ToolResult::Text(text(rng))
                                } else {
                                    an::ToolResult::Blocks(vec![text(rng)])
                                },
                            })
                            .collect();
                        q.messages.push(an::Message {
                            role: an::Role::User,
                            content: an::Content::Blocks(results),
                        });
                        results_last = true;
                    }
                    continue;
                }
            };
            let _ = results_last;
            results_last = false;
            q.messages.push(an::Message { role, content });
        }
        q
    }

    fn write_openai(q: &oa::Request<'_>) -> Vec<u8> {
        let mut w = Writer::default();
        q.write(&mut w, None);
        w.finish()
    }

    fn write_anthropic(q: &an::Request<'_>) -> Vec<u8> {
        let mut w = Writer::default();
        q.write(&mut w, None);
        w.finish()
    }

    /// Requests written and read back are the same; across to the other
    /// API and back they are the same too.
    #[test]
    fn requests_round_trip() {
        for seed in 0..CASES {
            let mut rng = SmallRng::seed_from_u64(seed);
            let q = openai_request(&mut rng);
            let bytes = write_openai(&q);
            serde_json::from_slice::<serde_json::Value>(&bytes).expect("valid JSON");
            let mut none = Unsupported::default();
            let read = document(&bytes, |r| oa::Request::read(r, &mut none)).unwrap();
            assert_eq!(read, q, "seed {seed}: written and read");
            assert!(none.is_empty(), "seed {seed}: {none:?}");
            let (there, json) = openai_app::to_messages(&q, &mut none).unwrap();
            assert!(none.is_empty() && json.is_none(), "seed {seed}");
            let there_bytes = write_anthropic(&there);
            let read_there = document(&there_bytes, |r| an::Request::read(r, &mut none)).unwrap();
            assert_eq!(read_there, there, "seed {seed}: Anthropic side");
            let back = anthropic_app::to_chat(&there, &mut none);
            assert!(none.is_empty(), "seed {seed}: {none:?}");
            assert_eq!(back, q, "seed {seed}: OpenAI -> Anthropic -> OpenAI");

            let q = anthropic_request(&mut rng);
            let bytes = write_anthropic(&q);
            let read = document(&bytes, |r| an::Request::read(r, &mut none)).unwrap();
            assert_eq!(read, q, "seed {seed}: written and read");
            let there = anthropic_app::to_chat(&q, &mut none);
            let there_bytes = write_openai(&there);
            let read_there = document(&there_bytes, |r| oa::Request::read(r, &mut none)).unwrap();
            assert_eq!(read_there, there, "seed {seed}: OpenAI side");
            let (back, _) = openai_app::to_messages(&there, &mut none).unwrap();
            assert!(none.is_empty(), "seed {seed}: {none:?}");
            assert_eq!(back, q, "seed {seed}: Anthropic -> OpenAI -> Anthropic");
        }
    }

    fn openai_answer(rng: &mut SmallRng) -> oa::Answer<'static> {
        let tool_calls: Vec<oa::ToolCall<'static>> = (0..rng.random_range(0..3))
            .map(|i| oa::ToolCall {
                id: Str::from_text(&format!("call_{i}")),
                name: name(rng),
                arguments: Str::of_json(object(rng).bytes()),
            })
            .collect();
        let finish = if tool_calls.is_empty() {
            ["stop", "length"][rng.random_range(0..2)]
        } else {
            "tool_calls"
        };
        let prompt = rng.random_range(0..10_000);
        oa::Answer {
            id: Some(Str::from_text("chatcmpl-1")),
            model: Some(Str::from_text("gpt-x")),
            content: (tool_calls.is_empty() || rng.random_bool(0.5)).then(|| text(rng)),
            refusal: None,
            tool_calls,
            finish_reason: Some(Str::from_text(finish)),
            usage: Some(oa::Tokens {
                prompt,
                completion: rng.random_range(0..1000),
                cached: rng.random_range(0..=prompt),
            }),
        }
    }

    fn anthropic_answer(rng: &mut SmallRng) -> an::Answer<'static> {
        let mut content = Vec::new();
        let with_text = rng.random_bool(0.7);
        if with_text {
            content.push(an::Block::Text(text(rng)));
        }
        // A message has some content.
        let uses = rng.random_range(usize::from(!with_text)..3);
        for i in 0..uses {
            content.push(an::Block::ToolUse {
                id: Str::from_text(&format!("toolu_{i}")),
                name: name(rng),
                input: object(rng),
            });
        }
        let stop = if uses > 0 {
            "tool_use"
        } else {
            ["end_turn", "max_tokens", "refusal"][rng.random_range(0..3)]
        };
        an::Answer {
            id: Some(Str::from_text("msg_1")),
            model: Some(Str::from_text("claude-x")),
            content,
            stop_reason: Some(Str::from_text(stop)),
            stop_sequence: None,
            usage: Some(an::Tokens {
                input: rng.random_range(0..10_000),
                output: rng.random_range(0..1000),
                cache_read: rng.random_range(0..10_000),
                cache_creation: 0,
            }),
        }
    }

    /// Answers written and read back are the same; across and back too.
    #[test]
    fn answers_round_trip() {
        for seed in 0..CASES {
            let mut rng = SmallRng::seed_from_u64(seed);
            let a = openai_answer(&mut rng);
            let mut w = Writer::default();
            a.write(&mut w, 1);
            let bytes = w.finish();
            assert_eq!(
                document(&bytes, oa::Answer::read).unwrap(),
                a,
                "seed {seed}"
            );
            let there = anthropic_app::to_message(&a).unwrap();
            let mut w = Writer::default();
            there.write(&mut w);
            let there_bytes = w.finish();
            assert_eq!(
                an::Answer::read(&there_bytes).unwrap(),
                there,
                "seed {seed}"
            );
            assert_eq!(openai_app::to_completion(&there, None), a, "seed {seed}");

            let a = anthropic_answer(&mut rng);
            let there = openai_app::to_completion(&a, None);
            assert_eq!(anthropic_app::to_message(&there).unwrap(), a, "seed {seed}");
        }
    }

    /// Random JSON in the shape of either request, with any mix of fields
    /// and values, never panics, and what crosses reads back as a valid
    /// request of the other API.
    #[test]
    fn random_requests_never_panic() {
        use serde_json::{Value, json};
        fn value(rng: &mut SmallRng, depth: u32) -> Value {
            match rng.random_range(0..if depth > 2 { 5 } else { 8 }) {
                0 => Value::Null,
                1 => json!(rng.random_bool(0.5)),
                2 => json!(rng.random_range(-5..5)),
                3 => json!(
                    [
                        "user",
                        "assistant",
                        "tool",
                        "system",
                        "text",
                        "x",
                        "image_url",
                        "auto"
                    ][rng.random_range(0..8)]
                ),
                4 => json!(1.5),
                5 | 6 => {
                    const KEYS: [&str; 24] = [
                        "role",
                        "content",
                        "type",
                        "text",
                        "tool_calls",
                        "tool_call_id",
                        "id",
                        "function",
                        "name",
                        "arguments",
                        "image_url",
                        "url",
                        "source",
                        "input",
                        "tool_use_id",
                        "media_type",
                        "data",
                        "stop",
                        "n",
                        "messages",
                        "max_tokens",
                        "tools",
                        "tool_choice",
                        "system",
                    ];
                    let mut o = serde_json::Map::new();
                    for _ in 0..rng.random_range(0..5) {
                        o.insert(
                            KEYS[rng.random_range(0..KEYS.len())].into(),
                            value(rng, depth + 1),
                        );
                    }
                    Value::Object(o)
                }
                _ => Value::Array(
                    (0..rng.random_range(0..4))
                        .map(|_| value(rng, depth + 1))
                        .collect(),
                ),
            }
        }
        let openai = super::openai();
        let anthropic = super::anthropic();
        let mut crossed = [0u32; 2];
        for seed in 0..CASES * 4 {
            let mut rng = SmallRng::seed_from_u64(seed);
            // Messages of either API's shapes, some with a field broken.
            let shapes = [
                json!({"role": "user", "content": "hi"}),
                json!({"role": "system", "content": [{"type": "text", "text": "x"}]}),
                json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}),
                json!({"role": "tool", "tool_call_id": "c", "content": "r"}),
                json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}),
                json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "r"}]}]}),
                json!({"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}),
                json!({"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}),
            ];
            let mut messages = Vec::new();
            for _ in 0..rng.random_range(1..5) {
                let mut m = shapes[rng.random_range(0..shapes.len())].clone();
                if rng.random_bool(0.3)
                    && let Some(o) = m.as_object_mut()
                {
                    let keys: Vec<String> = o.keys().cloned().collect();
                    let k = keys[rng.random_range(0..keys.len())].clone();
                    o.insert(k, value(&mut rng, 1));
                }
                messages.push(m);
            }
            let mut body = json!({"model": "m", "messages": messages, "max_tokens": 10});
            if let Value::Object(o) = &mut body {
                for _ in 0..rng.random_range(0..3) {
                    if let Value::Object(extra) = value(&mut rng, 0) {
                        o.extend(extra);
                    }
                }
            }
            let bytes = body.to_string().into_bytes();
            if let Ok(t) = super::super::request(super::Api::ChatCompletions, &bytes, &anthropic) {
                crossed[0] += 1;
                let mut none = Unsupported::default();
                document(&t.body, |r| an::Request::read(r, &mut none)).unwrap_or_else(|e| {
                    panic!("seed {seed}: {e}: {}", String::from_utf8_lossy(&t.body))
                });
            }
            if let Ok(t) = super::super::request(super::Api::Messages, &bytes, &openai) {
                crossed[1] += 1;
                let mut none = Unsupported::default();
                document(&t.body, |r| oa::Request::read(r, &mut none)).unwrap_or_else(|e| {
                    panic!("seed {seed}: {e}: {}", String::from_utf8_lossy(&t.body))
                });
            }
        }
        // Enough of them were valid to cross.
        assert!(crossed.iter().all(|&n| n > 100), "{crossed:?}");
    }
}
