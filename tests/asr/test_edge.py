"""The edge build: ONNX export (fp32 and static int8) that loads anywhere a model folder does."""

import json
from pathlib import Path

import numpy as np
import pytest

from asr.edge import (
    ONNX_FILE,
    OnnxRecognizer,
    activation_products,
    before_the_log,
    export_edge,
    read_vocabulary,
    waveform_conv,
)
from asr.errors import ModelLoadError
from asr.model import Recognizer, create_model_dir, vocabulary_from_tokenizer
from asr.pipeline import build_pipeline, load_recognizer
from serving.cli import main
from serving.settings import DEFAULT_MODEL_DIR
from tests.signals import espeak, speech

INT8_ARGMAX_AGREEMENT = 0.9
"""Stated tolerance: int8 picks the same most likely token as fp32 on at least 90% of frames."""


def test_fp32_export_matches_torch(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = export_edge(tiny_model_dir, tmp_path / "edge", "fp32").folder
    edge = load_recognizer(folder)
    assert isinstance(edge, OnnxRecognizer)
    reference = Recognizer.from_pretrained(tiny_model_dir, "cpu")
    clip, _ = speech()
    ours, theirs = edge.log_probs([clip])[0], reference.log_probs([clip])[0]
    assert ours.log_probs.shape == theirs.log_probs.shape
    assert ours.frame_s == theirs.frame_s
    np.testing.assert_allclose(ours.log_probs, theirs.log_probs, atol=1e-3)
    assert edge.vocab == reference.vocab
    tiny = clip[:80]  # shorter than one frame's window (165 samples): padded as the torch model pads it
    np.testing.assert_allclose(
        edge.log_probs([tiny])[0].log_probs, reference.log_probs([tiny])[0].log_probs, atol=1e-3
    )


def test_the_whisper_family_exports_and_runs_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The log-mel is inside the graph: the fp32 export matches torch on any length, past Whisper's
    30 s too (positions are computed, not sliced from a table), and the CLI takes the folders."""
    model = create_model_dir(tmp_path / "whisper", shape="whisper-tiny")
    assert (
        main(
            [
                "export",
                "--edge",
                "--precision",
                "fp32",
                "--model",
                str(model),
                "--out",
                str(tmp_path / "edge"),
            ]
        )
        == 0
    )
    edge, reference = load_recognizer(tmp_path / "edge"), Recognizer.from_pretrained(model, "cpu")
    clip, _ = speech()
    for samples in (clip, clip[:700], np.tile(clip, 10)):
        ours, theirs = edge.log_probs([samples])[0], reference.log_probs([samples])[0]
        assert ours.log_probs.shape == theirs.log_probs.shape and ours.frame_s == theirs.frame_s == 0.02
        np.testing.assert_allclose(ours.log_probs, theirs.log_probs, atol=1e-3)
    sample = str(Path(__file__).resolve().parents[2] / "data" / "samples" / "arctic_a0001.flac")
    for folder in (model, tmp_path / "edge"):
        assert main(["transcribe", "--model", str(folder), "--format", "jsonl", sample]) == 0
        assert "text" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edge") / "int8"
    assert main(["export", "--edge", "--out", str(out)]) == 0
    return out


def test_int8_export_of_the_bundled_model_is_small_and_agrees_with_fp32(
    int8_folder: Path, tmp_path: Path
) -> None:
    fp32 = export_edge(DEFAULT_MODEL_DIR, tmp_path / "fp32", "fp32")
    assert (int8_folder / ONNX_FILE).stat().st_size <= fp32.bytes / 2
    edge, reference = OnnxRecognizer(int8_folder), Recognizer.from_pretrained(DEFAULT_MODEL_DIR, "cpu")
    clips = [speech()[0], espeak("weather in paris")[0], espeak("directions to the airport")[0]]
    agreements = []
    for clip in clips:
        ours, theirs = edge.log_probs([clip])[0].log_probs, reference.log_probs([clip])[0].log_probs
        assert ours.shape == theirs.shape and np.isfinite(ours).all()
        agreements.append(np.mean(ours.argmax(-1) == theirs.argmax(-1)))
    assert min(agreements) >= INT8_ARGMAX_AGREEMENT, agreements


def test_int8_keeps_attention_products_and_the_waveform_conv_in_float(
    int8_folder: Path, tmp_path: Path
) -> None:
    import onnx

    fp32 = export_edge(DEFAULT_MODEL_DIR, tmp_path / "fp32", "fp32").folder
    reference = onnx.load(str(fp32 / ONNX_FILE)).graph
    attention = set(activation_products(reference))
    # The log-mel's products (the Whisper family), or the waveform's convolution (wav2vec2), stay float.
    spectral = set(before_the_log(reference)) or set(waveform_conv(reference))
    graph = onnx.load(str(int8_folder / ONNX_FILE)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    layers = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["num_hidden_layers"]
    assert len(attention) >= 2 * layers  # query x key and scores x value in each layer
    float_inputs = [
        producer.get(i) != "DequantizeLinear" for n in graph.node if n.name in attention for i in n.input
    ]
    assert float_inputs and all(float_inputs)
    quantized = [n for n in graph.node if n.op_type == "MatMul" and n.name not in attention | spectral]
    assert quantized and all(producer.get(n.input[1]) == "DequantizeLinear" for n in quantized)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(
        (producer.get(n.input[1]) == "DequantizeLinear") == (n.name not in spectral) for n in convs
    )
    assert any(n.name in spectral for n in convs) and any(n.name not in spectral for n in convs)


def test_every_command_runs_on_an_edge_folder(int8_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = build_pipeline(int8_folder, use_vad=False)
    assert pipeline.recognizer.version.startswith("int8@")
    sample = str(Path(__file__).resolve().parents[2] / "data" / "samples" / "arctic_a0001.flac")
    assert main(["transcribe", "--model", str(int8_folder), "--format", "jsonl", sample]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["model_version"].startswith("int8@") and "text" in row


def test_export_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--edge", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "a")]) == 2
    assert "cannot load" in capsys.readouterr().err
    missing = tmp_path / "missing.jsonl"
    assert main(["export", "--edge", "--calibration", str(missing), "--out", str(tmp_path / "b")]) == 2
    assert "cannot read manifest" in capsys.readouterr().err
    assert not (tmp_path / "b" / ONNX_FILE).exists()


LETTERS = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")


def _old_style_tokenizer(folder: Path) -> Path:
    """Tokenizer files as facebook/wav2vec2-base-960h ships them: no added_tokens_decoder, the
    special tokens in special_tokens_map.json."""
    folder.mkdir()
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *LETTERS])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    (folder / "tokenizer_config.json").write_text(json.dumps({**specials, "do_lower_case": False}))
    return folder


def test_vocabulary_is_read_as_transformers_reads_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import Wav2Vec2CTCTokenizer

    for folder in (tiny_model_dir, _old_style_tokenizer(tmp_path / "base-960h")):
        tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(folder, local_files_only=True)
        expected = vocabulary_from_tokenizer(tokenizer)
        assert read_vocabulary(folder) == expected


@pytest.mark.parametrize(
    "vocab_json", ['{"a": 0', '["a", "b"]', '{"en": {"a": 0}}', "{}"], ids=["cut", "list", "nested", "empty"]
)
def test_unreadable_tokenizer_files_are_load_errors(tmp_path: Path, vocab_json: str) -> None:
    folder = _old_style_tokenizer(tmp_path / "broken")
    (folder / "vocab.json").write_text(vocab_json)
    with pytest.raises(ModelLoadError):
        read_vocabulary(folder)


def test_a_broken_edge_folder_is_a_clear_cli_error(
    int8_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in int8_folder.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "tokenizer_config.json").write_text('{"added_tokens_decoder": {"0": "<pad>"}}')
    sample = str(Path(__file__).resolve().parents[2] / "data" / "samples" / "arctic_a0001.flac")
    assert main(["transcribe", "--model", str(broken), sample]) != 0
    assert "added_tokens_decoder" in capsys.readouterr().err
