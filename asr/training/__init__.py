"""Training a CTC recognizer, split as a recipe is: what a run is (`config`), what it hears
(`data`), what it distils (`distill`), what it leaves on disk (`checkpoints`) and the loop itself
(`loop`). The names callers use are re-exported here."""

from asr.training.checkpoints import BEST, CHECKPOINT, METRICS, average_models, export_model, save_model
from asr.training.config import DataSource, TrainConfig, TrainState, is_built_start
from asr.training.data import check_training_data, encode_labels, refuse_dev_clips
from asr.training.loop import train

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
