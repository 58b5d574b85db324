"""Deliberately broken models for rollout drills: practise a rollback before a real one needs it."""

import shutil
from pathlib import Path


def silent_copy(model_dir: Path, out: Path) -> Path:
    """A copy of `model_dir` whose CTC blank always wins: it answers every clip with a null
    transcript, the failure the canary's null-transcript gate must catch."""
    import torch

    from asr.model import load_ctc_model

    shutil.copytree(model_dir, out)
    model = load_ctc_model(out)
    with torch.no_grad():
        model.lm_head.bias[model.config.pad_token_id] += 100.0
    model.half().save_pretrained(out)
    return out
