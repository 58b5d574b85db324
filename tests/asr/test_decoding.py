from pathlib import Path

import numpy as np
import pytest

from asr.decoding import BeamDecoder, BeamOptions, GreedyDecoder, read_word_list
from asr.errors import DecoderConfigError
from asr.model import Emissions, Vocabulary

TOKENS = ("<pad>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz'")
VOCAB = Vocabulary(TOKENS, blank_id=0, delimiter_id=2)
FRAME_S = 0.02


def emissions(path: str, p: float = 0.9) -> Emissions:
    """Synthetic CTC output: each character of `path` is one frame ('-' blank, ' ' delimiter)
    holding probability `p`, the rest spread evenly over the other tokens."""
    log_probs = np.full((len(path), len(TOKENS)), np.log((1 - p) / (len(TOKENS) - 1)), np.float32)
    for frame, char in enumerate(path):
        index = 0 if char == "-" else 2 if char == " " else TOKENS.index(char)
        log_probs[frame, index] = np.log(p)
    return Emissions(log_probs, FRAME_S)


def ambiguous_parys() -> Emissions:
    """'parys' is the acoustically best reading (y 0.45), 'paris' a close second (i 0.35)."""
    e = emissions("-p-a-r-y-s-")
    log_probs = e.log_probs.copy()
    log_probs[7, TOKENS.index("y")] = np.log(0.45)
    log_probs[7, TOKENS.index("i")] = np.log(0.35)
    return Emissions(log_probs, FRAME_S)


HELLO_WORLD = "--hh-e-ll-ll-oo-- -ww-or-l-d--"


def test_greedy_collapses_repeats_and_blanks() -> None:
    hyp = GreedyDecoder(VOCAB).decode(emissions(HELLO_WORLD))
    assert hyp.text == "hello world"
    assert [w.word for w in hyp.words] == ["hello", "world"]


def test_greedy_word_times_and_confidence() -> None:
    hyp = GreedyDecoder(VOCAB).decode(emissions(HELLO_WORLD, p=0.8))
    hello, world = hyp.words
    assert hello.start_s == pytest.approx(2 * FRAME_S)  # 'h' first emitted at frame 2
    assert hello.end_s == pytest.approx(14 * FRAME_S)  # last 'o' run starts at frame 13
    assert world.start_s == pytest.approx(19 * FRAME_S)
    assert hyp.confidence == pytest.approx(0.8, abs=1e-6)
    assert hello.confidence == pytest.approx(0.8, abs=1e-6)


def test_confidence_drops_with_uncertain_frames() -> None:
    sure = GreedyDecoder(VOCAB).decode(emissions("-y-e-s-", p=0.95))
    unsure = GreedyDecoder(VOCAB).decode(emissions("-y-e-s-", p=0.4))
    assert sure.text == unsure.text == "yes"
    assert unsure.confidence < sure.confidence


def test_all_blank_and_empty_emissions_give_empty_text() -> None:
    for decoder in (GreedyDecoder(VOCAB), BeamDecoder(VOCAB, BeamOptions(beam_size=4))):
        assert decoder.decode(emissions("------")).text == ""
        assert decoder.decode(emissions("------")).confidence == 0.0
        assert decoder.decode(Emissions(np.zeros((0, len(TOKENS)), np.float32), FRAME_S)).text == ""


def test_beam_agrees_with_greedy_on_clear_input_with_the_same_times() -> None:
    greedy = GreedyDecoder(VOCAB).decode(emissions(HELLO_WORLD))
    beam = BeamDecoder(VOCAB, BeamOptions(beam_size=8)).decode(emissions(HELLO_WORLD))
    assert beam.text == greedy.text
    assert [w.start_s for w in beam.words] == pytest.approx([w.start_s for w in greedy.words])
    assert beam.confidence == pytest.approx(greedy.confidence)


def test_without_bias_the_acoustically_best_spelling_wins() -> None:
    assert GreedyDecoder(VOCAB).decode(ambiguous_parys()).text == "parys"
    assert BeamDecoder(VOCAB, BeamOptions()).decode(ambiguous_parys()).text == "parys"


def test_hotword_flips_a_close_call_lexicon_free() -> None:
    assert BeamDecoder(VOCAB, BeamOptions(hotwords=("paris",))).decode(ambiguous_parys()).text == "paris"


def test_hotword_does_not_reward_a_partial_match() -> None:
    # 'parys' shares 'par' with the hotword 'parma' but diverges: the bonus must be taken back,
    # so the result is the acoustic best, not a forced hotword.
    hyp = BeamDecoder(VOCAB, BeamOptions(hotwords=("parma",))).decode(ambiguous_parys())
    assert hyp.text == "parys"


def test_hotword_phrase_spanning_words() -> None:
    e = emissions("-n-e-w- -y-o-r-c-")
    log_probs = e.log_probs.copy()
    log_probs[15, TOKENS.index("c")] = np.log(0.45)
    log_probs[15, TOKENS.index("k")] = np.log(0.35)
    e = Emissions(log_probs, FRAME_S)
    assert BeamDecoder(VOCAB, BeamOptions()).decode(e).text == "new yorc"
    assert BeamDecoder(VOCAB, BeamOptions(hotwords=("new york",))).decode(e).text == "new york"


def test_lexicon_constrains_output_to_its_words() -> None:
    decoder = BeamDecoder(VOCAB, BeamOptions(lexicon=("paris", "london")))
    assert decoder.decode(ambiguous_parys()).text == "paris"


def test_hotword_in_lexicon_mode() -> None:
    plain = BeamDecoder(VOCAB, BeamOptions(lexicon=("paris", "parys")))
    assert plain.decode(ambiguous_parys()).text == "parys"
    biased = BeamDecoder(VOCAB, BeamOptions(lexicon=("parys",), hotwords=("paris",)))
    assert biased.decode(ambiguous_parys()).text == "paris"  # hotwords join the lexicon


# KenLM needs at least bigrams; the unigrams carry the preference for 'paris'.
ARPA = """\\data\\
ngram 1=5
ngram 2=2

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t0
-0.5\t</s>
-0.1\tparis\t0
-4.0\tparys\t0

\\2-grams:
-0.1\t<s> paris
-4.0\t<s> parys

\\end\\
"""


def test_ngram_lm_rescoring(tmp_path: Path) -> None:
    lm = tmp_path / "lm.arpa"
    lm.write_text(ARPA)
    options = BeamOptions(lexicon=("paris", "parys"), lm_path=lm, lm_weight=1.0)
    assert BeamDecoder(VOCAB, options).decode(ambiguous_parys()).text == "paris"
    with_hotword = BeamOptions(
        lexicon=("paris", "parys"), lm_path=lm, hotwords=("parys",), hotword_weight=20.0
    )
    assert BeamDecoder(VOCAB, with_hotword).decode(ambiguous_parys()).text == "parys"


def test_invalid_beam_options(tmp_path: Path) -> None:
    with pytest.raises(DecoderConfigError, match="beam size"):
        BeamOptions(beam_size=0)
    with pytest.raises(DecoderConfigError, match="needs a lexicon"):
        BeamOptions(lm_path=tmp_path / "lm.arpa")
    with pytest.raises(DecoderConfigError, match="no such language model"):
        BeamOptions(lexicon=("a",), lm_path=tmp_path / "missing.arpa")
    with pytest.raises(DecoderConfigError, match="characters the model lacks"):
        BeamDecoder(Vocabulary(("<pad>", "|", "a", "b"), 0, 1), BeamOptions(hotwords=("abc",)))
    with pytest.raises(DecoderConfigError, match="no lexicon word"):
        BeamDecoder(Vocabulary(("<pad>", "|", "a"), 0, 1), BeamOptions(lexicon=("zz",)))


def test_corrupt_lm_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.arpa"
    bad.write_text("this is not an ARPA file\n")
    with pytest.raises(DecoderConfigError):
        BeamDecoder(VOCAB, BeamOptions(lexicon=("paris",), lm_path=bad))


def test_read_word_list_normalizes_and_dedupes(tmp_path: Path) -> None:
    words = tmp_path / "hot.txt"
    words.write_text("# catalog words\nParis\nNew York  # a phrase\nparis\n\nSão Paulo\n")
    assert read_word_list(words) == ("paris", "new york", "sao paulo")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(DecoderConfigError, match="no words"):
        read_word_list(empty)
    with pytest.raises(DecoderConfigError, match="cannot read"):
        read_word_list(tmp_path / "missing.txt")
