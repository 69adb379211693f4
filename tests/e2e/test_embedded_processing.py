"""A graph with no processor replicas: the frontend tokenizes, routes and detokenizes itself."""

import openai
import pytest

from inference_graph.core.spec import Role
from inference_graph.runtime.discovery import Discovery

from .conftest import TINY_OVERRIDES

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.timeout(300)]

GREEDY = {"temperature": 0, "max_tokens": 12, "extra_body": {"ignore_eos": True}}


async def test_frontend_hosts_processing_when_the_graph_has_no_processor(start_graph, infrastructure):
    graph = start_graph("embedded", overrides=[*TINY_OVERRIDES, "services.processor.replicas=0"])
    discovery = await Discovery.connect(infrastructure["ETCD_ENDPOINTS"].split(","))
    assert await discovery.list_instances("embedded", Role.PROCESSOR.value) == {}
    await discovery.close()

    client = openai.AsyncOpenAI(base_url=graph.base_url + "/v1", api_key="unused", max_retries=0)
    assert [m.id async for m in client.models.list()] == ["tiny"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = await client.chat.completions.create(model="tiny", messages=messages, **GREEDY)
    stream = await client.chat.completions.create(
        model="tiny", messages=messages, stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    chunks = [chunk async for chunk in stream]
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == whole.choices[0].message.content
    )
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 12
    with pytest.raises(openai.BadRequestError) as error:
        await client.completions.create(model="tiny", prompt="hello " * 3000, max_tokens=2000)
    assert error.value.body["param"] == "max_tokens"
