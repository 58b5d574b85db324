"""Distillation from Whisper tiny.en's encoder, and the training loss of a batch as one module."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from asr.distributed import Ranks, sum_tensor_over_ranks
from asr.errors import DataError
from asr.training.config import TrainConfig
from asr.training.data import Example, Heard


class Distiller:
    """The distillation loss: a linear projection of one student layer toward the teacher."""

    def __init__(self, config: TrainConfig, model: Any, device: str, ranks: Ranks) -> None:
        from asr.teacher import TEACHER_DIM, WhisperTeacher

        self.teacher = WhisperTeacher(threads=max(1, torch.get_num_threads()))
        self.projection = torch.nn.Linear(model.config.hidden_size, TEACHER_DIM).to(device)
        self.model = model
        self.ranks = ranks
        self.weight = config.distill_weight
        self.layer = config.distill_layer
        if self.layer > model.config.num_hidden_layers:
            raise DataError(
                f"the model has {model.config.num_hidden_layers} layers; distill from one of them"
            )

    def targets(
        self, batch: list[Example], heard: list[Heard], width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from asr.teacher import align_frames

        frames = int(self.model._get_feat_extract_output_lengths(torch.tensor(width)))
        stride = width / max(frames, 1)
        targets, masks = [], []
        for example, clip in zip(batch, heard, strict=True):
            teacher = self.teacher.frames(str(example.path), clip.clean)
            lead, speech = round(clip.lead_samples / stride), round(clip.speech_samples / stride)
            target, mask = align_frames(teacher, frames, lead, max(speech, 1))
            targets.append(target)
            masks.append(mask)
        return torch.from_numpy(np.stack(targets)), torch.from_numpy(np.stack(masks))

    def loss(
        self, hidden_states: Sequence[torch.Tensor], targets: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        predicted = self.projection(hidden_states[self.layer].float())
        frames = min(predicted.shape[1], targets.shape[1])
        predicted, targets, mask = predicted[:, :frames], targets[:, :frames], mask[:, :frames]
        l1 = (predicted - targets).abs().mean(dim=-1)
        cosine = torch.nn.functional.cosine_similarity(predicted, targets, dim=-1)
        counted = mask.sum()
        if self.ranks.distributed:
            # A mean over the frames of the whole global batch: divide by every rank's frames,
            # times the world size, since DDP then averages the ranks' gradients.
            counted = sum_tensor_over_ranks(counted, self.ranks) / self.ranks.world_size
        loss: torch.Tensor = ((l1 - cosine) * mask).sum() / counted.clamp(min=1)
        return loss


class Student(torch.nn.Module):
    """The training loss of a batch (CTC, plus the weighted distillation loss) as one module, so
    that DistributedDataParallel, which averages the gradients of the module it wraps, reaches
    the distillation projection as well as the model."""

    def __init__(self, model: Any, distiller: Distiller | None, ranks: Ranks) -> None:
        super().__init__()
        self.model = model
        self.projection = distiller.projection if distiller is not None else None
        self.distiller = distiller
        # DDP averages the ranks' gradients. The mean CTC loss of equal shares averages to the
        # global batch's; a summed one ("sum" reduction) needs the world size to add up to it.
        self.ctc_scale = ranks.world_size if model.config.ctc_loss_reduction == "sum" else 1

    def forward(
        self, inputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss to minimize, and the distillation loss alone (None without distillation)."""
        outputs = self.model(
            inputs["input_values"],
            attention_mask=inputs.get("attention_mask"),
            labels=labels,
            output_hidden_states=self.distiller is not None,
        )
        loss: torch.Tensor = outputs.loss if self.ctc_scale == 1 else outputs.loss * self.ctc_scale
        if self.distiller is None:
            return loss, None
        distill_loss = self.distiller.loss(
            outputs.hidden_states, inputs["teacher_targets"], inputs["teacher_mask"]
        )
        return loss + self.distiller.weight * distill_loss, distill_loss
