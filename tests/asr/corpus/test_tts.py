"""Every TTS engine the corpus uses, for real (Debian packages and the hibari wheel)."""

import numpy as np
import pytest

from asr.corpus.tts import SynthesisError, Voice, all_engines

ENGINES = all_engines()


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_engine_speaks_with_its_first_and_last_voice(name: str) -> None:
    engine = ENGINES[name]
    assert engine.available(), f"{name} is not installed: the Makefile installs it"
    for voice_name in {engine.voice_names()[0], engine.voice_names()[-1]}:
        samples, rate = engine.synthesize("weather in paris", Voice(name, voice_name, rate=1.1, pitch=0.9))
        assert 8000 <= rate <= 48000
        assert samples.dtype == np.float32
        assert 0.5 < len(samples) / rate < 4.0
        assert np.abs(samples).max() > 0.05


def test_rate_changes_duration() -> None:
    engine = ENGINES["espeak"]
    slow, _ = engine.synthesize("directions to new york", Voice("espeak", "en-us+m1", rate=0.8))
    fast, _ = engine.synthesize("directions to new york", Voice("espeak", "en-us+m1", rate=1.3))
    assert len(fast) < 0.8 * len(slow)


def test_engine_failure_is_a_synthesis_error() -> None:
    with pytest.raises(SynthesisError):
        ENGINES["espeak"].synthesize("hello", Voice("espeak", "zzq-nonexistent"))
