"""The n-gram LM builder: a proper distribution, read by KenLM, and useful to the beam decoder."""

import json
from pathlib import Path

import pytest

from asr.decoding import BeamDecoder, BeamOptions, read_word_list
from asr.errors import DataError
from asr.lm import BOS, EOS, UNK, _estimate, backoff_prob, build_lm, corpus_sentences, count_ngrams
from tests.asr.test_decoding import VOCAB, ambiguous_parys

SENTENCES = [
    "the train to paris",
    "the road to paris",
    "a train to london",
    "paris in the spring",
    "to paris",
]


def test_every_context_is_a_distribution() -> None:
    counts, used = count_ngrams(SENTENCES, order=3)
    assert used == len(SENTENCES) and counts[2][("to", "paris", EOS)] == 3
    probs, backoffs = _estimate(counts, discount=0.7)
    outcomes = [w for (w,) in probs[0] if w != BOS]
    assert UNK in outcomes and EOS in outcomes
    contexts = [(), (BOS,), ("to",), ("paris",), ("unseen",), (BOS, "the"), ("train", "to"), ("zz", "to")]
    for context in contexts:
        total = sum(backoff_prob(probs, backoffs, (*context, w)) for w in outcomes)
        assert total == pytest.approx(1.0, abs=1e-9), context
    # Seen continuations beat unseen ones, and the backoff keeps every word possible.
    assert backoff_prob(probs, backoffs, ("to", "paris")) > backoff_prob(probs, backoffs, ("to", "spring"))
    assert backoff_prob(probs, backoffs, ("to", "spring")) > 0


def test_built_model_steers_the_beam_decoder(tmp_path: Path) -> None:
    # 'parys' is acoustically ahead (test_decoding); text that says 'paris' makes the LM overrule it.
    files = build_lm(SENTENCES, tmp_path / "lm", order=3)
    arpa = files.arpa.read_text()
    assert arpa.startswith("\\data\\\nngram 1=") and arpa.rstrip().endswith("\\end\\")
    words = read_word_list(files.lexicon)
    assert {"paris", "london", "spring"} <= set(words) and UNK not in words and "parys" not in words
    lexicon = (*words, "parys")  # a word the text never had: the LM scores it as <unk>
    plain = BeamDecoder(VOCAB, BeamOptions(lexicon=lexicon))
    assert plain.decode(ambiguous_parys()).text == "parys"
    with_lm = BeamDecoder(VOCAB, BeamOptions(lexicon=lexicon, lm_path=files.arpa, lm_weight=1.0))
    assert with_lm.decode(ambiguous_parys()).text == "paris"


def test_held_out_sentences_never_reach_the_model(tmp_path: Path) -> None:
    files = build_lm(["Go to Paris!", "a train to london"], tmp_path / "lm", exclude=["go to paris"])
    assert files.sentences == 1
    assert set(read_word_list(files.lexicon)) == {"a", "train", "to", "london"}


def test_sentences_from_manifests_tsv_and_text(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.flac", "text": "turn left"}) + "\n\n")
    (tmp_path / "s.tsv").write_text('id\ttext\nLJ1\the said "stop" twice\nLJ2\t\n')
    (tmp_path / "t.txt").write_text("one line\n\nanother\n")
    found = corpus_sentences([tmp_path / "m.jsonl", tmp_path / "s.tsv", tmp_path / "t.txt"])
    assert found == ["turn left", 'he said "stop" twice', "one line", "another"]


def test_bad_input_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no words"):
        build_lm(["", "  ", "!!"], tmp_path / "lm")
    with pytest.raises(DataError, match="order"):
        build_lm(SENTENCES, tmp_path / "lm", order=1)
    with pytest.raises(DataError, match="cannot read"):
        corpus_sentences([tmp_path / "missing.txt"])
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="cannot read"):
        corpus_sentences([tmp_path / "bad.jsonl"])
    assert not (tmp_path / "lm").exists()
