import pytest

from inference_graph.runtime import names


def test_subjects():
    assert names.endpoint_subject("g", "decode", "generate") == "ig.g.decode.generate"
    assert names.instance_subject("g", "decode", "generate", "ab12") == "ig.g.decode.generate.ab12"
    assert names.control_subject("g", "decode", "ab12") == "ig.g.decode.control.ab12"
    assert names.kv_events_subject("g", "ab12") == "ig.g.events.kv.ab12"
    assert names.load_subject("g", "ab12") == "ig.g.events.load.ab12"
    assert names.kv_events_wildcard("g") == "ig.g.events.kv.*"
    assert names.load_wildcard("g") == "ig.g.events.load.*"


def test_tokens_are_sanitised():
    assert names.token("a.b c*>d/e") == "a_b_c__d_e"
    assert names.endpoint_subject("my.graph", "decode", "gen") == "ig.my_graph.decode.gen"
    with pytest.raises(ValueError):
        names.token("")
    with pytest.raises(ValueError, match="reserved"):
        names.check_endpoint("control")


def test_keys_round_trip_model_names_with_slashes():
    assert names.instance_key("g", "decode", "ab12") == "/ig/g/instances/decode/ab12"
    key = names.model_key("g", "HuggingFaceTB/SmolLM2-135M", "ab12")
    assert key == "/ig/g/models/HuggingFaceTB%2FSmolLM2-135M/ab12"
    assert names.split_key(names.models_prefix("g"), key) == ["HuggingFaceTB/SmolLM2-135M", "ab12"]
    assert names.split_key("/other/", key) == []
    assert names.instances_prefix("g") == "/ig/g/instances/"
    assert names.instances_prefix("g", "decode") == "/ig/g/instances/decode/"
