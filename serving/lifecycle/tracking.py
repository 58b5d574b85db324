"""Training runs in MLflow: parameters, the loss and dev-metric curves, the data's content hashes,
the model card and the evaluation table. One training folder is one MLflow run: a resumed
training continues the run it started (its id is kept in the folder)."""

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from asr.corpus.datasets import dataset_digest
from asr.training import METRICS, TrainConfig
from serving.lifecycle.registry import RUN_ID_FILE, Registry, code_commit
from serving.settings import REPO_ROOT


class TrainingRun:
    """The MLflow run of one training folder."""

    def __init__(self, registry: Registry, config: TrainConfig) -> None:
        self.client = registry.client
        self.out_dir = config.out_dir
        saved = config.out_dir / RUN_ID_FILE
        if saved.is_file():
            self.run_id = saved.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(registry.experiment_id(), run_name=config.out_dir.name)
            self.run_id = run.info.run_id
            config.out_dir.mkdir(parents=True, exist_ok=True)
            saved.write_text(self.run_id)
            for key, value in flatten(asdict(config)).items():
                self.client.log_param(self.run_id, key, value[:6000])
            for source in config.train:
                self.client.set_tag(
                    self.run_id, f"manifest:{source.manifest}", dataset_digest(source.manifest)
                )
            self.client.set_tag(self.run_id, "code_commit", code_commit(REPO_ROOT))

    def record(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and value == value:  # NaN is not a metric
                self.client.log_metric(self.run_id, key, float(value), step=step)

    def finish(self, model_card: Path | None = None, evaluation: Path | None = None) -> None:
        for path in (self.out_dir / METRICS, self.out_dir / "config.json", model_card, evaluation):
            if path is not None and path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Parameters as MLflow takes them: flat string values (sources become `train.0.manifest`)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        elif isinstance(value, list | tuple) and value and isinstance(value[0], Mapping):
            for i, item in enumerate(value):
                flat |= flatten(item, f"{name}.{i}.")
        else:
            flat[name] = str(value) if isinstance(value, str | Path) else json.dumps(value, default=str)
    return flat
