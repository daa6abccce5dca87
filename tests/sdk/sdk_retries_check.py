"""One failing call through a Shepherd agent with an official Python SDK
(openai or anthropic) at its default settings (max_retries=2).

    python3 tests/sdk/sdk_retries_check.py openai|anthropic http://127.0.0.1:PORT

Prints the status the SDK ended with. The caller counts the requests the
SDK sent to the agent and the upstream attempts behind them.
"""

import sys

sdk, base = sys.argv[1], sys.argv[2].rstrip("/")
messages = [{"role": "user", "content": "Say hello."}]
if sdk == "openai":
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-app")
    assert client.max_retries == 2, client.max_retries
    try:
        client.chat.completions.create(model="gpt-4o", messages=messages)
        status = 200
    except openai.APIStatusError as e:
        status = e.status_code
else:
    import anthropic

    client = anthropic.Anthropic(base_url=base, api_key="sk-ant-app")
    assert client.max_retries == 2, client.max_retries
    try:
        client.messages.create(model="claude-x", max_tokens=16, messages=messages)
        status = 200
    except anthropic.APIStatusError as e:
        status = e.status_code
print(f"status={status}")
