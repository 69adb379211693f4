import pytest

from inference_graph.processing.stop import StopMatcher


def run(stops, pieces, include=False):
    matcher = StopMatcher(stops, include)
    emitted = []
    for piece in pieces:
        emitted.append(matcher.feed(piece))
        if matcher.matched is not None:
            break
    else:
        emitted.append(matcher.flush())
    return emitted, matcher.matched


@pytest.mark.parametrize(
    ("stops", "pieces", "include", "emitted", "matched"),
    [
        ([], ["a", "b"], False, ["a", "b", ""], None),
        (["STOP"], ["hello ", "ST", "OP", " more"], False, ["hello ", "", ""], "STOP"),
        (["STOP"], ["hello ", "ST", "OP", " more"], True, ["hello ", "", "STOP"], "STOP"),
        (["STOP"], ["hello S", "T", "x"], False, ["hello ", "", "STx", ""], None),  # false start released
        (["STOP"], ["ab STOP cd"], False, ["ab "], "STOP"),
        (["STOP"], ["ab STOP cd"], True, ["ab STOP"], "STOP"),
        (["\n\n", "END"], ["x\n", "yEND\n\nz"], False, ["x", "\ny"], "END"),  # earliest match wins
        (["ab", "b"], ["xab"], False, ["x"], "ab"),
        (["abc"], ["a", "b"], False, ["", "", "ab"], None),  # held prefix flushed at the end
        (["", "Z"], ["aZ"], False, ["a"], "Z"),  # empty stop strings are ignored
    ],
)
def test_stop_matcher(stops, pieces, include, emitted, matched):
    assert run(stops, pieces, include) == (emitted, matched)


def test_inactive_holds_but_does_not_match():
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("a STOP b S", active=False) == "a STOP b "
    assert matcher.matched is None
    assert matcher.feed("TOP", active=True) == ""
    assert matcher.matched == "STOP"
