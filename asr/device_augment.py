"""Augmentation on the training device, batched: what keeps a lent GPU busy.

The on-the-fly augmentation of `asr.corpus.augment` runs per clip in numpy and soxr on the CPU;
on a GPU that loader was the bottleneck (the GPU sat 5-21% busy). Here the loader only slices
cached PCM, and the device does the same kinds of conditions to the padded batch at once:
speed perturbation (tempo and pitch together, by resampling), gain from a whisper to clipping,
and recorded or white noise at a drawn SNR, then the clip to [-1, 1] that a microphone's
converter applies. SpecAugment on the log-mel runs inside the Whisper-family model.

Every draw comes from one generator seeded per batch by the training sampler, so a batch's
conditions follow from the run's seed and its step, as the CPU path's do.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from asr.corpus.augment import GAIN_RANGE_DB, SNR_CHOICES_DB, SPEED_FACTORS

NOISE_SHARE = 0.7
"""Of the augmented clips, the share that gets noise (as `asr.corpus.augment.draw_spec`)."""
RECORDED_SHARE = 0.5
"""Of the noisy clips, the share whose noise is a recording (the rest is white noise)."""
GAIN_SHARE = 0.5
"""Of the augmented clips, the share whose gain changes."""


@dataclass(frozen=True)
class Conditions:
    """One batch's draws, a row each (float32 or int64 CPU tensors): the test and the log read them."""

    augmented: torch.Tensor
    speed: torch.Tensor
    gain_db: torch.Tensor
    snr_db: torch.Tensor
    """NaN where a row gets no noise."""
    recorded: torch.Tensor
    noise_offset: torch.Tensor


class DeviceAugmenter:
    """Augments padded batches of float32 16 kHz clips where they already are (CPU or GPU)."""

    def __init__(self, share: float, noise: Sequence[np.ndarray], device: str) -> None:
        self.share = share
        joined = np.concatenate([np.asarray(n, dtype=np.float32) for n in noise]) if noise else np.zeros(0)
        self.noise = torch.from_numpy(joined.astype(np.float32)).to(device)

    def draw(self, rows: int, seed: int) -> Conditions:
        g = torch.Generator().manual_seed(seed)
        augmented = torch.rand(rows, generator=g) < self.share
        speed = torch.tensor(SPEED_FACTORS)[torch.randint(len(SPEED_FACTORS), (rows,), generator=g)]
        low, high = GAIN_RANGE_DB
        gain = torch.where(
            torch.rand(rows, generator=g) < GAIN_SHARE,
            low + (high - low) * torch.rand(rows, generator=g),
            0.0,
        )
        noisy = torch.rand(rows, generator=g) < NOISE_SHARE
        snr = torch.tensor(SNR_CHOICES_DB)[torch.randint(len(SNR_CHOICES_DB), (rows,), generator=g)]
        recorded = (torch.rand(rows, generator=g) < RECORDED_SHARE) & (len(self.noise) > 0)
        offset = (torch.rand(rows, generator=g) * max(len(self.noise), 1)).long()
        return Conditions(
            augmented=augmented,
            speed=torch.where(augmented, speed, 1.0),
            gain_db=torch.where(augmented, gain, 0.0),
            snr_db=torch.where(augmented & noisy, snr, torch.nan),
            recorded=recorded,
            noise_offset=offset,
        )

    def __call__(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, samples) padded clips and their lengths -> the augmented batch and lengths."""
        c = self.draw(len(waveforms), seed)
        waveforms, lengths = change_speed(waveforms, lengths, c.speed)
        device = waveforms.device
        valid = torch.arange(waveforms.shape[1], device=device)[None, :] < lengths[:, None]
        waveforms = waveforms * (10 ** (c.gain_db / 20)).to(device)[:, None]
        noise = self._noise(c, waveforms.shape[1], device, seed)
        speech_rms = _rms(waveforms, valid)
        scale = (
            speech_rms / _rms(noise, valid).clamp(min=1e-8) / 10 ** (c.snr_db.nan_to_num(0.0).to(device) / 20)
        )
        has_noise = ~torch.isnan(c.snr_db).to(device)
        waveforms = waveforms + noise * (scale * has_noise)[:, None] * valid
        return waveforms.clamp(-1.0, 1.0), lengths

    def apply(self, inputs: dict[str, torch.Tensor], normalize: bool) -> dict[str, torch.Tensor]:
        """A loader's padded batch (`input_values`, `attention_mask`, `augment_seed`) augmented;
        with `normalize` each clip is scaled back to zero mean and unit variance afterwards, as a
        wav2vec2 feature extractor would have heard it."""
        values, mask = inputs["input_values"], inputs["attention_mask"]
        values, lengths = self(values.float(), mask.sum(dim=-1), int(inputs["augment_seed"]))
        valid = (
            torch.arange(values.shape[1], device=values.device)[None, :] < lengths.to(values.device)[:, None]
        )
        if normalize:
            count = valid.sum(dim=1, keepdim=True).clamp(min=1)
            mean = (values * valid).sum(dim=1, keepdim=True) / count
            var = ((values - mean).square() * valid).sum(dim=1, keepdim=True) / count
            values = (values - mean) / torch.sqrt(var + 1e-7) * valid
        return {**inputs, "input_values": values, "attention_mask": valid.long()}

    def _noise(self, c: Conditions, width: int, device: torch.device, seed: int) -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(seed)
        white = torch.randn(len(c.speed), width, generator=generator, device=device)
        if len(self.noise) == 0:
            return white
        index = (c.noise_offset.to(device)[:, None] + torch.arange(width, device=device)[None, :]) % len(
            self.noise
        )
        return torch.where(c.recorded.to(device)[:, None], self.noise[index], white)


def _rms(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((x.square() * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1))


def change_speed(
    waveforms: torch.Tensor, lengths: torch.Tensor, factors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Play each row `factors[row]` times faster (shorter and higher) by linear resampling, one
    interpolation per distinct factor; returns the new padded batch and lengths."""
    new_lengths = torch.floor(lengths.cpu().float() / factors).long()
    width = int(new_lengths.max()) if len(new_lengths) else 0
    out = torch.zeros(len(waveforms), width, dtype=waveforms.dtype, device=waveforms.device)
    for factor in torch.unique(factors).tolist():
        rows = (factors == factor).nonzero().flatten().to(waveforms.device)
        if factor == 1.0:
            resampled = waveforms[rows]
        else:
            size = int(np.floor(waveforms.shape[1] / factor))
            resampled = F.interpolate(
                waveforms[rows][:, None], size=size, mode="linear", align_corners=False
            )[:, 0]
        keep = min(width, resampled.shape[1])
        out[rows, :keep] = resampled[:, :keep]
    valid = torch.arange(width, device=waveforms.device)[None, :] < new_lengths.to(waveforms.device)[:, None]
    return out * valid, new_lengths.to(lengths.device)
