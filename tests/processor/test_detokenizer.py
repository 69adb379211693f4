from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from inference_graph.processing.detokenizer import IncrementalDetokenizer, prompt_context

MULTIBYTE = "Café au lait, 東京タワー 🙂👍🏽 — naïve «ß» 한국어 ok"
PROMPT = "<|im_start|>user\nSay something<|im_end|>\n<|im_start|>assistant\n"
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def stream(tokenizer, prompt_ids, ids, skip=True):
    detokenizer = IncrementalDetokenizer(tokenizer.backend, prompt_ids, skip)
    deltas = [detokenizer.step(token_id) for token_id in ids]
    return deltas, detokenizer.flush()


def test_multibyte_text_never_shows_replacement_characters(smol):
    ids = smol.hf.encode(MULTIBYTE)
    assert any("\ufffd" in smol.decode([i]) for i in ids)  # the test text really splits characters
    deltas, tail = stream(smol, smol.hf.encode(PROMPT), ids)
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) == MULTIBYTE and tail == ""


def test_special_tokens_skipped_or_kept(tiny):
    ids = [*tiny.hf.encode("hello world"), tiny.hf.eos_token_id]
    assert "".join(stream(tiny, [], ids, skip=True)[0]) == "hello world"
    assert "".join(stream(tiny, [], ids, skip=False)[0]) == "hello world<|im_end|>"


def test_prompt_context_avoids_split_characters(smol):
    prompt_ids = smol.hf.encode("x 東京")
    context = prompt_context(smol.backend, prompt_ids)
    assert len(context) >= 4 and "\ufffd" not in smol.decode(context, skip_special_tokens=False)
    assert prompt_context(smol.backend, [1, 2]) == [1, 2]


@SETTINGS
@given(st.text(max_size=40), st.text(max_size=40))
def test_text_round_trips_without_replacement_characters(smol, prompt, reply):
    ids = smol.hf.encode(reply)
    assume(smol.decode(ids) == reply)  # some rare code points do not survive the tokenizer itself
    deltas, tail = stream(smol, smol.hf.encode(prompt), ids)
    assert all("\ufffd" not in delta for delta in deltas) or "\ufffd" in reply
    assert "".join(deltas) == reply and tail == ""


@SETTINGS
@given(st.data())
def test_deltas_concatenate_to_one_shot_decode(smol, data):
    """Random ids (lone UTF-8 bytes, specials...): streaming equals decoding all at once."""
    vocab = st.integers(min_value=0, max_value=smol.vocab_size - 1)
    ids = data.draw(st.lists(vocab, max_size=30))
    prompt_ids = smol.hf.encode(data.draw(st.text(max_size=20)))
    skip = data.draw(st.booleans())
    deltas, tail = stream(smol, prompt_ids, ids, skip)
    assert "".join(deltas) + tail == smol.decode(ids, skip_special_tokens=skip)


@SETTINGS
@given(st.data())
def test_frames_of_many_tokens_give_the_same_text(smol, data):
    """step_many on random frame boundaries equals feeding one token at a time."""
    vocab = st.integers(min_value=0, max_value=smol.vocab_size - 1)
    ids = data.draw(st.lists(vocab, max_size=30) | st.just(smol.hf.encode(MULTIBYTE)))
    prompt_ids = smol.hf.encode(data.draw(st.text(max_size=20)))
    skip = data.draw(st.booleans())
    cuts = sorted(data.draw(st.sets(st.integers(min_value=0, max_value=len(ids)), max_size=6)))
    frames = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)], strict=True)]
    detokenizer = IncrementalDetokenizer(smol.backend, prompt_ids, skip)
    batched = "".join(detokenizer.step_many(frame) for frame in frames) + detokenizer.flush()
    deltas, tail = stream(smol, prompt_ids, ids, skip)
    assert batched == "".join(deltas) + tail == smol.decode(ids, skip_special_tokens=skip)
