"""Shadow comparison: challenger transcripts paired with the champion's searches."""

import pytest

from monitoring.shadow import compare_shadow
from tests.monitoring.factory import make


def test_pairs_disagreement_nulls_latency_and_failures() -> None:
    events = [
        make("a", transcript="weather in paris", timings_s={"asr": 0.1}, model_version="champ@1"),
        make("b", transcript="london", timings_s={"asr": 0.2}),
        make("c", outcome="null_transcript", transcript="", timings_s={"asr": 0.1}),
        make("d", transcript="rome"),  # no shadow: not a pair
        make(
            "a-shadow",
            kind="shadow",
            target_request_id="a",
            transcript="weather in paris",
            timings_s={"asr": 0.05},
        ),
        make("b-shadow", kind="shadow", target_request_id="b", transcript="lon don", timings_s={"asr": 0.06}),
        make("c-shadow", kind="shadow", target_request_id="c", outcome="null_transcript", transcript=""),
        make("x-shadow", kind="shadow", target_request_id="gone", transcript="x"),  # its search is outside
        make("e-shadow", kind="shadow", target_request_id="d", outcome="server_error", status_code=503),
    ]
    comparison = compare_shadow(events)
    assert comparison.pairs == 3 and comparison.challenger_failures == 1
    # champion says 4 words in total; the challenger swaps "london" for "lon don": 1 sub + 1 ins
    assert comparison.disagreement_wer == pytest.approx(2 / 4)
    assert comparison.champion_null_ratio == pytest.approx(1 / 3)
    assert comparison.challenger_null_ratio == pytest.approx(1 / 3)
    assert comparison.champion_recognition_p95_s == pytest.approx(0.19, abs=0.011)


def test_no_shadow_events_means_no_comparison() -> None:
    comparison = compare_shadow([make("a", transcript="paris")])
    assert (
        comparison.pairs == 0
        and comparison.disagreement_wer is None
        and comparison.champion_null_ratio is None
    )
