"""An app on one API family served by a backend of the other, through a
Shepherd agent: the official openai SDK against an Anthropic backend, or
the official anthropic SDK against an OpenAI backend.

    python3 tests/sdk/translation_check.py openai|anthropic http://127.0.0.1:PORT

Prints "ok: <case>" for each case that behaves as the SDK's own provider
would: a plain answer, a stream, a tool-call round trip (plain and
streamed), an image, usage with cached tokens, a 4xx, a 5xx, a refused
parameter and a broken stream. Any other behaviour raises.
"""

import base64
import json
import sys

sdk, base = sys.argv[1], sys.argv[2].rstrip("/")
# A 1x1 PNG.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


def ok(case):
    print(f"ok: {case}", flush=True)


def openai_app():
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-app", max_retries=0)
    weather = {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    }
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."},
    ]

    r = client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=50)
    assert r.object == "chat.completion", r
    assert r.choices[0].message.content == "reply from claude", r
    assert r.choices[0].finish_reason == "stop", r
    assert r.model == "claude-sonnet-4-5", r.model
    ok("plain")

    # Anthropic counts cache reads apart; OpenAI's prompt holds them.
    assert r.usage.prompt_tokens == 11 + 4, r.usage
    assert r.usage.completion_tokens == 7, r.usage
    assert r.usage.total_tokens == 22, r.usage
    assert r.usage.prompt_tokens_details.cached_tokens == 4, r.usage
    ok("usage")

    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == "claude-0 claude-1 claude-2 claude-3 claude-4 ", text
    assert finish == "stop", finish
    assert usage.prompt_tokens == 15 and usage.completion_tokens == 5, usage
    ok("stream")

    r = client.chat.completions.create(
        model="gpt-4o", messages=messages, tools=[weather], tool_choice="required"
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "weather", call
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}, call
    follow = messages + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "weather", "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21C"},
    ]
    r = client.chat.completions.create(model="gpt-4o", messages=follow, tools=[weather])
    assert r.choices[0].message.content == "reply from claude: the tool said Sunny, 21C", r
    ok("tool round trip")

    with client.chat.completions.stream(
        model="gpt-4o", messages=messages, tools=[weather]
    ) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "weather", final
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}, final
    assert final.choices[0].finish_reason == "tool_calls", final
    ok("streamed tool call")

    r = client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            }
        ],
    )
    assert r.choices[0].message.content == "reply from claude", r
    ok("image")

    try:
        client.chat.completions.create(
            model="gpt-4o", messages=messages, extra_headers={"x-mock-mode": "unauthorized"}
        )
        raise AssertionError("no error")
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e
        assert "authentication_error" in e.message, e.message
    ok("4xx")

    try:
        client.chat.completions.create(
            model="gpt-4o", messages=messages, extra_headers={"x-mock-status": "529"}
        )
        raise AssertionError("no error")
    except openai.InternalServerError as e:
        assert e.status_code == 503, e
        assert "overloaded_error" in e.message, e.message
    ok("5xx")

    try:
        client.chat.completions.create(model="gpt-4o", messages=messages, n=2)
        raise AssertionError("no error")
    except openai.BadRequestError as e:
        assert e.status_code == 400, e
        assert e.body["param"] == "n", e.body
        assert "no counterpart" in e.message, e.message
    ok("refused parameter")

    stream = client.chat.completions.create(
        model="gpt-4o", messages=messages, stream=True, extra_headers={"x-mock-cut-after": "3"}
    )
    text = ""
    try:
        for chunk in stream:
            for c in chunk.choices:
                text += c.delta.content or ""
        raise AssertionError("the stream ended cleanly: " + text)
    except openai.APIError as e:
        assert "shepherd_stream_broken" in str(e.body or e.message), e
    assert text.startswith("claude-0"), text
    ok("broken stream")


def anthropic_app():
    import anthropic

    client = anthropic.Anthropic(base_url=base, api_key="sk-ant-app", max_retries=0)
    weather = {
        "name": "weather",
        "description": "The weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    }
    messages = [{"role": "user", "content": "Say hello."}]

    r = client.messages.create(
        model="claude-x", max_tokens=50, system="Be brief.", messages=messages
    )
    assert r.type == "message" and r.role == "assistant", r
    assert r.content[0].text == "reply from gpt", r
    assert r.stop_reason == "end_turn", r
    assert r.model == "gpt-4o", r.model
    ok("plain")

    # OpenAI's prompt holds its cached tokens; Anthropic counts them apart.
    assert r.usage.input_tokens == 10, r.usage
    assert r.usage.cache_read_input_tokens == 4, r.usage
    assert r.usage.output_tokens == 5, r.usage
    ok("usage")

    with client.messages.stream(
        model="claude-x", max_tokens=50, system="Be brief.", messages=messages
    ) as s:
        text = s.get_final_text()
        final = s.get_final_message()
    assert text == "gpt-0 gpt-1 gpt-2 gpt-3 gpt-4 ", text
    assert final.stop_reason == "end_turn", final
    assert final.usage.output_tokens == 5 and final.usage.input_tokens == 10, final.usage
    ok("stream")

    r = client.messages.create(
        model="claude-x",
        max_tokens=50,
        messages=messages,
        tools=[weather],
        tool_choice={"type": "any"},
    )
    assert r.stop_reason == "tool_use", r
    use = next(b for b in r.content if b.type == "tool_use")
    assert use.name == "weather" and use.input == {"city": "Paris", "days": 2}, use
    follow = messages + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in r.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21C"}],
        },
    ]
    r = client.messages.create(
        model="claude-x", max_tokens=50, messages=follow, tools=[weather]
    )
    assert r.content[0].text == "reply from gpt: the tool said Sunny, 21C", r
    ok("tool round trip")

    with client.messages.stream(
        model="claude-x", max_tokens=50, messages=messages, tools=[weather]
    ) as s:
        final = s.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.name == "weather" and use.input == {"city": "Paris", "days": 2}, final
    assert final.stop_reason == "tool_use", final
    ok("streamed tool call")

    r = client.messages.create(
        model="claude-x",
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                ],
            }
        ],
    )
    assert r.content[0].text == "reply from gpt", r
    ok("image")

    try:
        client.messages.create(
            model="claude-x",
            max_tokens=50,
            messages=messages,
            extra_headers={"x-mock-mode": "unauthorized"},
        )
        raise AssertionError("no error")
    except anthropic.AuthenticationError as e:
        assert e.status_code == 401, e
        assert e.body["error"]["type"] == "authentication_error", e.body
        assert "invalid_api_key" in e.message, e.message
    ok("4xx")

    try:
        client.messages.create(
            model="claude-x",
            max_tokens=50,
            messages=messages,
            extra_headers={"x-mock-status": "503"},
        )
        raise AssertionError("no error")
    except anthropic.APIStatusError as e:
        assert e.status_code == 529, e
        assert e.body["error"]["type"] == "overloaded_error", e.body
    ok("5xx")

    try:
        client.messages.create(
            model="claude-x", max_tokens=50, messages=messages, extra_body={"top_k": 5}
        )
        raise AssertionError("no error")
    except anthropic.BadRequestError as e:
        assert e.status_code == 400, e
        assert "top_k" in e.message and "no counterpart" in e.message, e.message
    ok("refused parameter")

    text = ""
    try:
        with client.messages.stream(
            model="claude-x",
            max_tokens=50,
            messages=messages,
            extra_headers={"x-mock-cut-after": "3"},
        ) as s:
            for piece in s.text_stream:
                text += piece
        raise AssertionError("the stream ended cleanly: " + text)
    except anthropic.APIStatusError as e:
        assert "shepherd_stream_broken" in str(e.body), e.body
    assert text.startswith("gpt-0"), text
    ok("broken stream")


if sdk == "openai":
    openai_app()
else:
    anthropic_app()
