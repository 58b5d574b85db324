"""The Whisper-front-end CTC family: Whisper tiny.en's encoder, exactly, under a CTC head.

A probe of frozen features (DESIGN.md, "Feature probe") showed that the wav2vec2 transplant's
fitted convolutional front end loses what Whisper's layers need to read sentences: one linear
CTC layer over Whisper's own encoder output beat the whole fine-tuned transplant. So this family
keeps Whisper's front end as it is: the 80-bin log-mel with Whisper's exact parameters, its two
convolutions, and its sinusoidal positions, **sliced to the clip's length** (Whisper pads every
input to 30 s; a 1 s query here costs 1 s of frames). Above it sit Whisper's pre-norm layers and
final layer norm, then a linear CTC head over our vocabulary.

The model reads raw 16 kHz samples (`input_values`, with a sample-level `attention_mask`), like
wav2vec2, and computes the log-mel inside `forward`: the recognizer, the training loop and the
edge export then treat both families alike, and on a GPU the log-mel runs there, batched. Padded
batches give each clip what it would get alone: the log-mel reflects each clip at its own end,
its clamp reads each clip's own maximum, the convolutions see zeros past the clip, and attention
never reads padding.

`WhisperCTCConfig` and `WhisperCTCForCTC` register with `AutoConfig` and `AutoModelForCTC`
(`register`), so `save_pretrained` folders load wherever a wav2vec2 folder does.
"""

import math
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from transformers import AutoConfig, AutoModelForCTC, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from asr.audio import SAMPLE_RATE_HZ
from asr.frames import WHISPER_FRONT_END

MODEL_TYPE = "whisper_ctc"

# Whisper's log-mel (openai/whisper whisper/audio.py): 25 ms Hann windows every 10 ms, 80 Slaney
# mel bins, log10 clamped 8 decades below the clip's peak, then scaled to about [-1, 1].
N_FFT = 400
HOP_SAMPLES = 160
FREQUENCY_BINS = N_FFT // 2 + 1
LOG_FLOOR = 1e-10
DYNAMIC_RANGE_DECADES = 8.0
SAMPLES_PER_FRAME = 2 * HOP_SAMPLES
"""One encoder frame: two mel frames (the second convolution has stride 2), 20 ms."""
POSITION_TIMESCALE = 10_000
"""Whisper's `sinusoids(length, channels, max_timescale=10000)`."""


class WhisperCTCConfig(PreTrainedConfig):
    """Shape of Whisper's encoder, the CTC head, and SpecAugment on the log-mel (training only)."""

    model_type = MODEL_TYPE

    vocab_size: int = 30
    num_mel_bins: int = 80
    hidden_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    intermediate_size: int = 1536
    layer_norm_eps: float = 1e-5
    max_source_positions: int = 1500
    """Whisper's 30 s. Longer inputs get positions from the same formula, which Whisper never saw."""
    final_dropout: float = 0.0
    pad_token_id: int | None = 0
    ctc_loss_reduction: str = "mean"
    ctc_zero_infinity: bool = True
    apply_spec_augment: bool = False
    mask_time_prob: float = 0.0
    """Share of log-mel frames (10 ms each) hidden in spans of `mask_time_length` while training."""
    mask_time_length: int = 10
    mask_feature_prob: float = 0.0
    """Share of mel bins hidden in spans of `mask_feature_length` while training."""
    mask_feature_length: int = 8
    initializer_range: float = 0.02

    # The front end as a convolution stack (the STFT window and hop, then Whisper's two
    # convolutions): what the project reads for the frame rate and the shortest usable clip.
    @property
    def conv_kernel(self) -> tuple[int, ...]:
        return WHISPER_FRONT_END[0]

    @property
    def conv_stride(self) -> tuple[int, ...]:
        return WHISPER_FRONT_END[1]


# --- The front end -------------------------------------------------------------------------------


@cache
def _mel_filters(mels: int) -> np.ndarray:
    """Whisper's filterbank (mels, 201): librosa.filters.mel(sr=16000, n_fft=400, n_mels=mels),
    Slaney scale and norm, as transformers computes it (a lent GPU's image has no librosa)."""
    from transformers.audio_utils import mel_filter_bank

    filters = mel_filter_bank(
        num_frequency_bins=FREQUENCY_BINS,
        num_mel_filters=mels,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE_HZ / 2,
        sampling_rate=SAMPLE_RATE_HZ,
        norm="slaney",
        mel_scale="slaney",
    )
    return np.ascontiguousarray(filters.T, dtype=np.float32)


@cache
def _dft_kernels() -> np.ndarray:
    """The Hann-windowed real DFT as convolution kernels (2 * 201, 1, 400): cosines, then sines.
    A strided convolution is the STFT that every runtime has (ONNX, int8 builds included)."""
    n = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # torch.hann_window (periodic)
    angles = 2 * np.pi * np.outer(np.arange(FREQUENCY_BINS), n) / N_FFT
    kernels = np.concatenate([np.cos(angles) * window, -np.sin(angles) * window])
    return kernels[:, None, :].astype(np.float32)


def sinusoids(length: int, channels: int, device: torch.device | None = None) -> torch.Tensor:
    """Whisper's fixed positions (length, channels): sines then cosines over geometric timescales.
    Computed for each clip's own length (no table of 1,500 to slice), so an exported graph has
    no length limit."""
    increment = math.log(POSITION_TIMESCALE) / (channels // 2 - 1)
    inverse = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32, device=device))
    scaled = torch.arange(length, dtype=torch.float32, device=device)[:, None] * inverse[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def mel_frames(samples: torch.Tensor) -> torch.Tensor:
    """Log-mel frames of clips of `samples` samples: Whisper drops the centred STFT's last one."""
    return torch.div(samples, HOP_SAMPLES, rounding_mode="floor")


def encoder_frames(samples: torch.Tensor) -> torch.Tensor:
    """Encoder frames (20 ms) of clips of `samples` samples."""
    return torch.div(mel_frames(samples) + 1, 2, rounding_mode="floor")


def _reflect_each(waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(batch, samples + N_FFT): each row reflected by N_FFT / 2 at both ends of its own length
    (torch.stft's `center=True`, pad_mode "reflect"), zeros past that."""
    half = N_FFT // 2
    position = torch.arange(waveforms.shape[1] + N_FFT, device=waveforms.device) - half
    last = (lengths - 1).clamp(min=0)[:, None]
    index = position.abs()[None, :].expand(waveforms.shape[0], -1)
    index = torch.where(index > last, 2 * last - index, index)
    inside = (position[None, :] < lengths[:, None] + half) & (index >= 0)
    gathered = waveforms.gather(1, index.clamp(0, waveforms.shape[1] - 1))
    return torch.where(inside, gathered, torch.zeros_like(gathered))


def log_mel(waveforms: torch.Tensor, lengths: torch.Tensor, mels: int = 80) -> torch.Tensor:
    """Whisper's log-mel spectrogram (batch, mels, frames) of float32 16 kHz rows, each of its own
    length in `lengths`; frames past a row's own end are zero."""
    kernels = torch.from_numpy(_dft_kernels()).to(waveforms)
    spectrum = F.conv1d(_reflect_each(waveforms, lengths)[:, None], kernels, stride=HOP_SAMPLES)
    spectrum = spectrum[:, :, :-1]  # Whisper drops the last frame of the centred STFT
    power = spectrum[:, :FREQUENCY_BINS] ** 2 + spectrum[:, FREQUENCY_BINS:] ** 2
    filters = torch.from_numpy(_mel_filters(mels)).to(waveforms)
    log_spec = torch.matmul(filters, power).clamp(min=LOG_FLOOR).log10()
    valid = (
        torch.arange(log_spec.shape[2], device=waveforms.device)[None, :] < mel_frames(lengths)[:, None]
    )[:, None, :]
    peak = log_spec.masked_fill(~valid, -math.inf).amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - DYNAMIC_RANGE_DECADES)
    return torch.where(valid, (log_spec + 4.0) / 4.0, torch.zeros_like(log_spec))


def spec_augment(mel: torch.Tensor, frames: torch.Tensor, config: WhisperCTCConfig) -> torch.Tensor:
    """SpecAugment on a (batch, mels, frames) log-mel: time and frequency spans set to zero (about
    the log-mel's mean). Each row gets round(prob * its length / span) spans, at uniform starts."""
    batch, bins, width = mel.shape
    keep = torch.ones_like(mel, dtype=torch.bool)
    axes = (
        (config.mask_time_prob, config.mask_time_length, frames.float(), width, 2),
        (
            config.mask_feature_prob,
            config.mask_feature_length,
            torch.full_like(frames, bins).float(),
            bins,
            1,
        ),
    )
    for prob, span, extent, size, axis in axes:
        if prob <= 0 or span < 1:
            continue
        counts = torch.floor(prob * extent / span + torch.rand(batch, device=mel.device)).long()
        most = int(counts.max()) if batch else 0
        if most == 0:
            continue
        starts = torch.rand(batch, most, device=mel.device) * (extent[:, None] - span).clamp(min=0)
        used = torch.arange(most, device=mel.device)[None, :] < counts[:, None]
        index = torch.arange(size, device=mel.device)
        inside = (index[None, None, :] >= starts[..., None]) & (
            index[None, None, :] < starts[..., None] + span
        )
        hidden = (inside & used[..., None]).any(dim=1)  # (batch, size)
        keep &= ~(hidden[:, None, :] if axis == 2 else hidden[:, :, None])
    return mel * keep


# --- The model -------------------------------------------------------------------------------------


class WhisperFrontEnd(nn.Module):
    """Log-mel, Whisper's two convolutions (GELU), positions sliced to the clip."""

    def __init__(self, config: WhisperCTCConfig) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv1d(config.num_mel_bins, config.hidden_size, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.hidden_size, config.hidden_size, kernel_size=3, stride=2, padding=1)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # The power spectrum spans ten decades: in bf16 (autocast on a GPU) its small bins vanish.
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            mel = log_mel(waveforms.float(), lengths, self.config.num_mel_bins)
        mel_valid = _mask(mel_frames(lengths), mel.shape[2])[:, None, :]
        if self.training and self.config.apply_spec_augment:
            mel = spec_augment(mel, mel_frames(lengths), self.config)
        # Zeros past each clip, as a clip alone gets from the convolutions' own padding.
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype))) * mel_valid
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        return x + sinusoids(x.shape[1], x.shape[2], x.device).to(x.dtype)


def _mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


class WhisperEncoderLayer(nn.Module):
    """Whisper's pre-norm layer: self-attention (no key bias), then a GELU feed-forward."""

    def __init__(self, config: WhisperCTCConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.heads = config.num_attention_heads
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(dim, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, dim)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        batch, frames, dim = x.shape
        h = self.self_attn_layer_norm(x)
        q, k, v = (
            proj(h).view(batch, frames, self.heads, -1).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        x = x + self.out_proj(attended.transpose(1, 2).reshape(batch, frames, dim))
        out: torch.Tensor = x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        return out


class WhisperCTCForCTC(PreTrainedModel):
    """Whisper's encoder and a CTC head; the interface of transformers' `Wav2Vec2ForCTC`."""

    config_class = WhisperCTCConfig
    config: WhisperCTCConfig
    base_model_prefix = "whisper_ctc"
    main_input_name = "input_values"
    input_modalities = "audio"

    def __init__(self, config: WhisperCTCConfig) -> None:
        super().__init__(config)
        self.front_end = WhisperFrontEnd(config)
        self.layers = nn.ModuleList(WhisperEncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()  # type: ignore[no-untyped-call]

    def freeze_feature_encoder(self) -> None:
        """Freeze Whisper's two convolutions (the log-mel has no parameters)."""
        self.front_end.requires_grad_(False)

    def freeze_lower_layers(self, layers: int) -> None:
        """Train only the layers from `layers` up, the final norm and the CTC head."""
        self.requires_grad_(False)
        for module in (*self.layers[layers:], self.layer_norm, self.lm_head):
            module.requires_grad_(True)

    def _get_feat_extract_output_lengths(self, input_lengths: torch.Tensor | int) -> torch.Tensor:
        return encoder_frames(torch.as_tensor(input_lengths))

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **_: Any,
    ) -> CausalLMOutput:
        """`input_values`: (batch, samples) float 16 kHz, unnormalized; `attention_mask`: 1 on
        samples, 0 on padding. Logits are (batch, frames, vocab) at 20 ms a frame."""
        waveforms = input_values.float()
        if attention_mask is None:
            lengths = torch.full(
                (waveforms.shape[0],), waveforms.shape[1], dtype=torch.long, device=waveforms.device
            )
        else:
            lengths = attention_mask.sum(dim=-1).long()
        x = self.front_end(waveforms, lengths)
        frames = encoder_frames(lengths)
        attend = None if attention_mask is None else _mask(frames, x.shape[1])[:, None, None, :]
        hidden_states = [x]
        for layer in self.layers:
            x = layer(x, attend)
            hidden_states.append(x)
        x = self.layer_norm(x)
        hidden_states[-1] = x  # as transformers reports it: the last entry is after the final norm
        logits = self.lm_head(self.dropout(x))
        loss = None if labels is None else self._ctc_loss(logits, frames, labels)
        return CausalLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )

    def _ctc_loss(self, logits: torch.Tensor, frames: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """As `Wav2Vec2ForCTC`: labels padded with -100, the blank is the pad token."""
        present = labels >= 0
        targets = labels.masked_select(present)
        log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
        with torch.backends.cudnn.flags(enabled=False):
            return F.ctc_loss(
                log_probs,
                targets,
                frames,
                present.sum(-1),
                blank=self.config.pad_token_id or 0,
                reduction=self.config.ctc_loss_reduction,
                zero_infinity=self.config.ctc_zero_infinity,
            )


def register() -> None:
    """Make `AutoConfig` and `AutoModelForCTC` know the family (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, WhisperCTCConfig)
        AutoModelForCTC.register(WhisperCTCConfig, WhisperCTCForCTC)
    except ValueError:  # already registered: transformers refuses a second registration
        pass
