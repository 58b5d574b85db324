"""Training a CTC recognizer (the loop and everything it needs; split into modules next)."""

from asr.training.loop import (
    BEST,
    CHECKPOINT,
    METRICS,
    DataSource,
    TrainConfig,
    TrainState,
    average_models,
    check_training_data,
    encode_labels,
    export_model,
    is_built_start,
    refuse_dev_clips,
    save_model,
    train,
)

__all__ = [
    "BEST",
    "CHECKPOINT",
    "METRICS",
    "DataSource",
    "TrainConfig",
    "TrainState",
    "average_models",
    "check_training_data",
    "encode_labels",
    "export_model",
    "is_built_start",
    "refuse_dev_clips",
    "save_model",
    "train",
]
