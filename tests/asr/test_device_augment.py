"""Augmentation on the training device: speed, gain and noise applied to a padded batch at once,
drawn from one seed per batch, and a training run that uses it."""

from pathlib import Path

import numpy as np
import pytest
import torch

from asr.device_augment import DeviceAugmenter, change_speed
from asr.errors import DataError
from asr.model import create_model_dir
from asr.training import DataSource, TrainConfig, train
from tests.signals import noise, tone


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / 16_000)[spectrum.argmax()])


def test_change_speed_moves_pitch_and_length_per_row() -> None:
    a, b = tone(1000.0, 1.0), tone(500.0, 0.5)
    batch = torch.zeros(2, len(a))
    batch[0], batch[1, : len(b)] = torch.from_numpy(a), torch.from_numpy(b)
    out, lengths = change_speed(batch, torch.tensor([len(a), len(b)]), torch.tensor([1.1, 1.0]))
    assert lengths.tolist() == [int(len(a) / 1.1), len(b)]
    assert _peak_hz(out[0, : lengths[0]].numpy()) == pytest.approx(1100.0, abs=5)
    assert torch.equal(out[1, : len(b)], batch[1, : len(b)])
    assert not out[1, len(b) :].any()  # padding stays silent


def test_noise_lands_at_the_drawn_snr_inside_each_clip_only() -> None:
    augmenter = DeviceAugmenter(share=1.0, noise=[noise(3.0, amplitude=0.3, seed=1)], device="cpu")
    clips = torch.from_numpy(np.stack([tone(300.0, 1.0, amplitude=0.3)] * 16))
    lengths = torch.full((16,), 16_000)
    lengths[0] = 8_000
    clips[0, 8_000:] = 0
    seed = 3
    drawn = augmenter.draw(16, seed)
    out, new_lengths = augmenter(clips, lengths, seed)
    slowed, _ = change_speed(clips, lengths, drawn.speed)
    checked = 0
    for row in range(16):
        n = int(new_lengths[row])
        assert not out[row, n:].any()
        if torch.isnan(drawn.snr_db[row]) or (out[row].abs() >= 1).any():
            continue
        clean = slowed[row, :n] * 10 ** (float(drawn.gain_db[row]) / 20)
        added = out[row, :n] - clean
        snr = 10 * np.log10(float(clean.square().mean()) / float(added.square().mean()))
        assert snr == pytest.approx(float(drawn.snr_db[row]), abs=0.2)
        checked += 1
    assert checked >= 5
    again, _ = augmenter(clips, lengths, seed)
    assert torch.equal(out, again)
    other, _ = augmenter(clips, lengths, seed + 1)
    assert not torch.equal(out, other)


def test_apply_rebuilds_the_mask_and_normalizes_for_wav2vec2() -> None:
    augmenter = DeviceAugmenter(share=1.0, noise=[], device="cpu")
    values = torch.from_numpy(np.stack([tone(440.0, 1.0), np.pad(tone(440.0, 0.5), (0, 8000))]))
    mask = torch.tensor([[1] * 16_000, [1] * 8_000 + [0] * 8_000])
    out = augmenter.apply(
        {"input_values": values, "attention_mask": mask, "augment_seed": torch.tensor(5)}, True
    )
    lengths = out["attention_mask"].sum(dim=1)
    assert out["input_values"].shape[1] == out["attention_mask"].shape[1] == int(lengths.max())
    first = out["input_values"][0, : lengths[0]]
    assert float(first.mean()) == pytest.approx(0.0, abs=1e-4) and float(first.std()) == pytest.approx(
        1.0, abs=1e-2
    )


def test_training_augments_on_the_device(tmp_path: Path, shared_data: Path, tiny_set: Path) -> None:
    data = tiny_set
    model = create_model_dir(tmp_path / "model", shape="whisper-tiny")
    config = TrainConfig(
        out_dir=tmp_path / "run", init=str(model), train=(DataSource(data),), steps=6, batch_size=2,
        lr=3e-3, warmup_steps=2, curriculum_steps=0, eval_every=3, device="cpu", seed=0, augment=1.0,
        augment_on_device=True, shared_data=shared_data, length_buckets=2,
    )  # fmt: skip
    state = train(config, log=lambda _: None)
    assert state.step == 6 and all(np.isfinite(r["loss"]) for r in state.history)
    with pytest.raises(DataError, match="drop --augment-on-device"):
        TrainConfig(
            out_dir=tmp_path, init="x", train=(DataSource(data),), augment_on_device=True, distill_weight=1.0
        )
