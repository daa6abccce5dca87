"""The official openai Python SDK, pointed at a Shepherd agent.

    python3 tests/sdk/openai_sdk_check.py http://127.0.0.1:PORT

Checks a normal and a streamed chat completion, and that failures reach the
SDK as proper APIError exceptions: an upstream 500, a stream broken after it
started, and a request no policy matches. Prints one line per check; exits
non-zero on the first failure.
"""

import sys

import openai

base = sys.argv[1].rstrip("/")
client = openai.OpenAI(base_url=base + "/v1", api_key="sk-app-key-never-forwarded", max_retries=0)
messages = [{"role": "user", "content": "Say hello."}]

reply = client.chat.completions.create(model="gpt-4o", messages=messages)
assert reply.choices[0].message.content == "reply from primary", reply
assert reply.usage.prompt_tokens == 10, reply.usage
print("ok: chat completion")

chunks = client.chat.completions.create(
    model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True}
)
text = ""
usage = None
for chunk in chunks:
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
assert text.startswith("primary-0 "), text
assert usage is not None and usage.prompt_tokens == 10, usage
print("ok: streamed chat completion")

try:
    client.chat.completions.create(
        model="gpt-4o", messages=messages, extra_headers={"x-mock-status": "500"}
    )
    raise SystemExit("FAILED: an upstream 500 did not raise")
except openai.InternalServerError as e:
    assert isinstance(e, openai.APIError)
    assert e.status_code == 500, e
    print("ok: upstream 500 raises", type(e).__name__)

try:
    stream = client.chat.completions.create(
        model="gpt-4o", messages=messages, stream=True, extra_headers={"x-mock-cut-after": "2"}
    )
    for _ in stream:
        pass
    raise SystemExit("FAILED: a broken stream ended without an error")
except openai.APIError as e:
    assert "shepherd_stream_broken" in str(e.body) or "broke off" in str(e), repr(e)
    print("ok: broken stream raises", type(e).__name__)

bad = openai.OpenAI(base_url=base + "/elsewhere", api_key="x", max_retries=0)
try:
    bad.chat.completions.create(model="gpt-4o", messages=messages)
    raise SystemExit("FAILED: an unmatched request did not raise")
except openai.NotFoundError as e:
    assert e.body["type"] == "shepherd_no_route", e.body
    print("ok: no route raises", type(e).__name__)
