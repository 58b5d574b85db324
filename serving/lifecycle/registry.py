"""The model registry, on MLflow: versions with lineage, and aliases that say who serves.

A registered version is a model folder logged as the artifacts of an MLflow run, plus tags that
record where it came from (the training run, its manifests and their content hashes, the parent
model, the code commit). Three aliases carry the deployment roles:
- `champion` serves;
- `challenger` is under test (shadow, canary);
- `previous` is the champion before the last promotion: the rollback target.
By default MLflow is embedded (a SQLite database and an artifact folder under `var/mlflow`); any
tracking server works through the tracking URI. The bundled model is registered on first use,
so a fresh clone has a champion.
"""

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asr.model import model_version

if TYPE_CHECKING:
    from serving.lifecycle.service import SteeredService
    from serving.settings import Settings

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
FAILED_GATES = "failed_gates"
"""The tag of a version whose canary was rolled back: never champion or previous again."""
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)
EXPERIMENT = "voice-search"
MODEL_ARTIFACT = "model"
LINEAGE_PREFIX = "lineage."
RUN_ID_FILE = "mlflow_run_id"
"""In a training folder: the MLflow run it logs to, so a resumed training continues that run."""


class RegistryError(Exception):
    """A registry operation cannot be done: unknown version or alias, unreachable store."""


@dataclass(frozen=True)
class Lineage:
    """Where a model came from; recorded as tags on its registered version."""

    training_run: str = ""
    parent_model: str = ""
    manifests: Mapping[str, str] = field(default_factory=dict)
    """Manifest path -> sha256 of its content."""
    code_commit: str = ""
    note: str = ""

    def tags(self) -> dict[str, str]:
        tags = {
            "training_run": self.training_run,
            "parent_model": self.parent_model,
            "code_commit": self.code_commit,
            "note": self.note,
        }
        tags |= {f"manifest:{path}": digest for path, digest in self.manifests.items()}
        return {LINEAGE_PREFIX + k: v for k, v in tags.items() if v}


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: int
    aliases: tuple[str, ...]
    run_id: str
    model_version: str
    """The content version the service and every event record (`asr.model.model_version`)."""
    created_ms: int
    tags: Mapping[str, str]

    @property
    def lineage(self) -> dict[str, str]:
        return {
            k.removeprefix(LINEAGE_PREFIX): v for k, v in self.tags.items() if k.startswith(LINEAGE_PREFIX)
        }


def code_commit(repo: Path) -> str:
    """The checkout's commit, with `+dirty` when it has uncommitted changes; empty outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if head.returncode != 0:
        return ""
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def sqlite_artifact_root(tracking_uri: str) -> Path | None:
    """For a SQLite tracking store, an `artifacts` folder beside its database: MLflow's default
    would be `./mlruns` in whatever folder the command ran from (a checkout, say)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return Path(tracking_uri.removeprefix(prefix)).resolve().parent / "artifacts"


class Registry:
    """Registered versions of one model name and their aliases, through an MLflow client."""

    def __init__(self, tracking_uri: str, name: str, artifact_root: Path | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.name = name
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._artifact_root = artifact_root or sqlite_artifact_root(tracking_uri)

    @classmethod
    def embedded(cls, folder: Path, name: str) -> "Registry":
        """SQLite database and artifact folder under `folder` (created when missing)."""
        folder.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{folder.resolve() / 'mlflow.db'}", name, folder.resolve() / "artifacts")

    def experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = self._artifact_root.as_uri() if self._artifact_root else None
        return str(self.client.create_experiment(EXPERIMENT, artifact_location=location))

    # Reading

    def versions(self) -> list[RegisteredModel]:
        """Every version, newest first; empty before the first registration."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name='{self.name}'")
            aliases = self._aliases() if found else {}
        except MlflowException as e:
            raise RegistryError(f"cannot read the registry at {self.tracking_uri}: {e}") from e
        return sorted((self._model(v, aliases) for v in found), key=lambda m: -m.version)

    def _aliases(self) -> dict[int, tuple[str, ...]]:
        """Version -> its aliases (MLflow's version search leaves them out)."""
        by_version: dict[int, list[str]] = {}
        for alias, version in (self.client.get_registered_model(self.name).aliases or {}).items():
            by_version.setdefault(int(version), []).append(alias)
        return {version: tuple(sorted(names)) for version, names in by_version.items()}

    def get(self, ref: str | int) -> RegisteredModel:
        """A version by number (`3`) or alias (`champion`)."""
        from mlflow.exceptions import MlflowException

        try:
            if str(ref).isdigit():
                found = self.client.get_model_version(self.name, str(ref))
            else:
                found = self.client.get_model_version_by_alias(self.name, str(ref))
            aliases = self._aliases()
        except MlflowException as e:
            raise RegistryError(f"no version '{ref}' of {self.name}") from e
        return self._model(found, aliases)

    def alias(self, alias: str) -> RegisteredModel | None:
        try:
            return self.get(alias)
        except RegistryError:
            return None

    def model_dir(self, ref: str | int) -> Path:
        """A local folder of a version's model files, `v<version>/<the registered folder's name>`,
        so that the id the service records (`asr.model.model_version`: the folder's name and a
        hash of its files) is the one the registry lists: one model, one name everywhere."""
        import mlflow.artifacts

        found = self.get(ref)
        name = found.model_version.rpartition("@")[0] or f"{self.name}-v{found.version}"
        served = self._served_root / f"v{found.version}" / name
        if not (served / "config.json").is_file():
            path = mlflow.artifacts.download_artifacts(
                run_id=found.run_id, artifact_path=MODEL_ARTIFACT, tracking_uri=self.tracking_uri
            )
            tmp = served.with_name(served.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            served.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(path, tmp)
            shutil.rmtree(served, ignore_errors=True)
            tmp.replace(served)
        return served

    @property
    def _served_root(self) -> Path:
        root = self._artifact_root.parent if self._artifact_root else Path(tempfile.gettempdir())
        return root / "served"

    # Writing

    def register(
        self, model_dir: Path, lineage: Lineage | None = None, run_id: str | None = None
    ) -> RegisteredModel:
        """Log `model_dir` as a run's artifacts (a new run unless `run_id`) and register it."""
        from mlflow.exceptions import MlflowException

        lineage = lineage or Lineage()
        if not (model_dir / "config.json").is_file():
            raise RegistryError(f"not a model folder (no config.json): {model_dir}")
        try:
            if run_id is None:
                run = self.client.create_run(self.experiment_id(), run_name=f"register {model_dir.name}")
                run_id = run.info.run_id
                self.client.set_terminated(run_id)
            self.client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
            if not self.client.search_registered_models(f"name='{self.name}'"):
                self.client.create_registered_model(self.name)
            source = f"runs:/{run_id}/{MODEL_ARTIFACT}"
            tags = lineage.tags() | {"model_version": model_version(model_dir)}
            created = self.client.create_model_version(self.name, source, run_id=run_id, tags=tags)
        except MlflowException as e:
            raise RegistryError(f"cannot register {model_dir}: {e}") from e
        logger.info("registered %s as %s version %s", model_dir, self.name, created.version)
        return self.get(int(created.version))

    def set_alias(self, alias: str, ref: str | int) -> RegisteredModel:
        target = self.get(ref)
        self.client.set_registered_model_alias(self.name, alias, str(target.version))
        return self.get(target.version)

    def clear_alias(self, alias: str) -> None:
        if self.alias(alias) is not None:
            self.client.delete_registered_model_alias(self.name, alias)

    def mark_failed(self, ref: str | int, reason: str) -> RegisteredModel:
        """Tag `ref` as having failed its canary gates: it can no longer become champion or
        `previous`, and loses the aliases it had (other than champion, which it never got)."""
        target = self.get(ref)
        self.client.set_model_version_tag(self.name, str(target.version), FAILED_GATES, reason[:500])
        for alias in (CHALLENGER, PREVIOUS):
            if alias in target.aliases:
                self.clear_alias(alias)
        return self.get(target.version)

    def _refuse_failed(self, target: RegisteredModel, action: str) -> None:
        reason = target.tags.get(FAILED_GATES)
        if reason:
            raise RegistryError(
                f"version {target.version} ({target.model_version}) failed its canary gates ({reason}); "
                f"it cannot {action}"
            )

    def promote(self, ref: str | int) -> RegisteredModel:
        """`ref` becomes champion; the champion it replaces becomes `previous`. A version that
        failed its canary gates is refused."""
        target = self.get(ref)
        self._refuse_failed(target, "become champion")
        champion = self.alias(CHAMPION)
        if champion is not None and champion.version == target.version:
            return target
        if champion is not None:
            self.set_alias(PREVIOUS, champion.version)
        if CHALLENGER in target.aliases:
            self.clear_alias(CHALLENGER)
        return self.set_alias(CHAMPION, target.version)

    def rollback(self) -> RegisteredModel:
        """`previous` becomes champion again; the champion it replaces becomes `previous`."""
        previous = self.alias(PREVIOUS)
        if previous is None:
            raise RegistryError("nothing to roll back to: no version has the alias 'previous'")
        self._refuse_failed(previous, "become champion again")
        champion = self.alias(CHAMPION)
        self.set_alias(CHAMPION, previous.version)
        if champion is not None:
            self.set_alias(PREVIOUS, champion.version)
        else:
            self.clear_alias(PREVIOUS)
        return self.get(previous.version)

    def ensure_champion(self, bundled_dir: Path) -> RegisteredModel:
        """The champion; on first use the bundled model is registered and made champion."""
        champion = self.alias(CHAMPION)
        if champion is not None:
            return champion
        registered = self.register(
            bundled_dir, Lineage(note="the bundled default model, registered on first use")
        )
        return self.set_alias(CHAMPION, registered.version)

    def _model(self, version: Any, aliases: Mapping[int, tuple[str, ...]]) -> RegisteredModel:
        return RegisteredModel(
            name=version.name,
            version=int(version.version),
            aliases=aliases.get(int(version.version), ()),
            run_id=version.run_id or "",
            model_version=(version.tags or {}).get("model_version", ""),
            created_ms=int(version.creation_timestamp or 0),
            tags=dict(version.tags or {}),
        )


def open_server_registry(settings: "Settings") -> Registry:
    """The registry the service's settings name (no first-use registration: the CLI does that)."""
    return registry_for(settings.mlflow_tracking_uri, settings.mlflow_dir, settings.registry_name)


def registered_version(settings: "Settings", served_version: str) -> int | None:
    """The registry's version of the model the service loaded, when the registry's champion is
    that model; None when there is no registry yet (none is created here) or it is another one."""
    if not settings.mlflow_tracking_uri and not (settings.mlflow_dir / "mlflow.db").is_file():
        return None
    try:
        champion = open_server_registry(settings).alias(CHAMPION)
    except RegistryError:
        logger.warning("cannot read the registry; promotions will not move its aliases", exc_info=True)
        return None
    same = champion is not None and _content(champion.model_version) == _content(served_version)
    return champion.version if champion is not None and same else None


def _content(version: str) -> str:
    """The content hash of a `folder@hash` model version: the same weights in any folder."""
    return version.rpartition("@")[2]


def sync_registry(service: "SteeredService") -> None:
    """After the service changed its champion: when the new champion came from the registry, it
    becomes the registry's champion too (the old one `previous`). Blocking; failures are logged,
    since the service has already switched."""
    version = service.champion_registry_version
    if version is None:
        return
    try:
        open_server_registry(service.settings).promote(version)
    except RegistryError:
        logger.exception("the service promoted version %s, but the registry could not follow", version)


def mark_failed(service: "SteeredService", version: int, reason: str) -> None:
    """Record in the registry that `version` failed its canary gates (blocking; logged on failure)."""
    try:
        open_server_registry(service.settings).mark_failed(version, reason)
    except RegistryError:
        logger.exception("version %s failed its gates, but the registry could not record it", version)


def registry_for(tracking_uri: str, folder: Path, name: str) -> Registry:
    """The configured registry: a tracking URI when given, else the embedded store in `folder`."""
    return Registry(tracking_uri, name) if tracking_uri else Registry.embedded(folder, name)
