"""Settings: the only module that reads the environment.

Every knob has a default that works on a fresh clone; `VOICE_SEARCH_<FIELD>` (the field name in
upper case, e.g. `VOICE_SEARCH_MAX_UPLOAD_BYTES`) overrides it. Values are parsed and validated
here, once, so a bad variable fails at start-up with a message naming it.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from asr.model import Device
from asr.spotting import SpotOptions
from monitoring.events import EventStore, EventStoreError, SQLiteEventStore
from serving.search import SearchOptions

if TYPE_CHECKING:
    from asr.corpus.domain import DomainPack

Mode = Literal["off", "shadow", "canary"]
"""How a challenger serves beside the champion (`serving.lifecycle.rollout`)."""
ROLLOUT_MODES: tuple[Mode, ...] = get_args(Mode)
Automation = Literal["human_only", "shadow", "assist", "partial", "full"]
"""How much of a voice search the model answers alone (`serving.lifecycle.review`)."""
AUTOMATION_LEVELS: tuple[Automation, ...] = get_args(Automation)
SENDS_TO_PEOPLE: tuple[Automation, ...] = ("human_only", "shadow", "partial")
"""The degrees that can route a request to a person: they need the audio kept for the reviewer."""

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "data" / "models" / "voice-search-small"
"""The bundled model, trained by this project (see data/README.md for its provenance)."""
DEFAULT_DOMAIN_DIR = REPO_ROOT / "data" / "domains" / "places"
"""The default domain pack: world cities and countries."""
DEFAULT_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
"""The real recordings and texts laid beside the checkout."""
DEFAULT_MONITORING_DIR = REPO_ROOT / "data" / "monitoring"
"""Alarm rules and the reference profile for drift."""
DEFAULT_STATE_DIR = REPO_ROOT / "var"
"""Where the service keeps its event store and (when enabled) retained audio; ignored by git."""

ENV_PREFIX = "VOICE_SEARCH_"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    """Process-wide settings; the CLI's flags override them per command."""

    model_dir: Path = DEFAULT_MODEL_DIR
    device: Device = "auto"
    max_clip_s: float = 3600.0
    batch_size: int = 8
    log_level: str = "WARNING"
    # The service (`voice-search serve`).
    host: str = "127.0.0.1"
    port: int = 8000
    domain_dir: Path = DEFAULT_DOMAIN_DIR
    db_path: Path = DEFAULT_STATE_DIR / "events.sqlite3"
    event_store_url: str = ""
    """A `postgresql://` URL: the event store every replica shares (leader election and the rollout's
    state go through it too). Empty: the embedded SQLite file at `db_path`, for one process."""
    slot: str = "primary"
    """The deployment slot this process serves (blue/green, canary...); recorded on every event."""
    api_max_clip_s: float = 30.0
    """Longest clip the API accepts: voice queries are seconds long; longer is a client error."""
    max_upload_bytes: int = 10 * 1024 * 1024
    """Largest request body read; 30 s of 48 kHz stereo 16-bit WAV is 5.8 MB."""
    bias_decoding: bool = True
    """Beam search with the catalog's names as hotwords and the domain's words as lexicon."""
    beam_size: int = 16
    hotword_weight: float = 1.0
    spot_catalog: bool = True
    """Rank voice queries by the catalog names spotted in their audio (`asr.spotting`, about
    8 ms of CPU per 3 s query); false ranks them by the transcript alone, like typed queries."""
    spot_char_bonus: float = SpotOptions.char_bonus
    """Log-ratio a character of a name may cost before a longer name stops ranking higher."""
    spot_carrier_floor: float = SpotOptions.carrier_floor
    """How well the query templates' carrier words must fit before their frames are closed to
    names (per-character ratio; 1.0: only those the best path spells exactly)."""
    micro_batch_size: int = 8
    """Concurrent requests recognized in one model call; 1 turns micro-batching off."""
    micro_batch_wait_ms: float = 5.0
    torch_threads: int = 0
    """The model's CPU threads; 0 leaves torch's default (every core). Replicas sharing a machine
    should split its cores: two replicas at two threads each on two cores measured half the
    throughput of one (threads spin against each other); `voice-search cluster` sets cores/N."""
    prepare_beside_model: bool = True
    """Decode, preprocess and VAD each clip on a second thread as it arrives, beside the model's
    batches (`serving.batching`); false runs them in the model's thread, before each batch."""
    """How long the first request of a batch waits for company."""
    max_queue: int = 32
    """Requests waiting for the model beyond this are answered 503 with Retry-After."""
    search_limit: int = SearchOptions.limit
    search_min_score: float = SearchOptions.min_score
    search_min_match: float = SearchOptions.min_match
    """Spotted names rank down to the first below this per-character match (`SearchOptions`)."""
    # Streaming voice search (`WS /v1/search/stream`, serving/streaming.py).
    stream_endpoint_ms: float = 600.0
    """Silence after speech, as the VAD hears it, that ends an utterance: the final comes then,
    without waiting for the client's `end`."""
    stream_partial_ms: float = 200.0
    """Least time between two partial results of one stream."""
    stream_left_context_s: float = 6.0
    """A partial recognizes at most this much of the latest audio, so its cost stays bounded."""
    stream_max_concurrent: int = 32
    """Streams open at once; one more is closed at once (1013, try again later)."""
    stream_idle_timeout_s: float = 10.0
    """A stream that sends nothing for this long is closed (1008)."""
    stream_send_queue: int = 8
    """Messages waiting for a slow client; beyond it the oldest partial is dropped (never the final)."""
    stream_allowed_origins: str = ""
    """Comma-separated origins (scheme://host[:port]) whose pages may open streams, besides the
    server's own; a page elsewhere needs the admin token (a bearer header, or the subprotocol
    `voice-search.bearer.<base64url>`: `serving/streaming.py`)."""
    retain_audio: bool = False
    """Keep request audio for retraining. Recordings are personal data: off unless enabled."""
    audio_retention_days: float = 30.0
    # Monitoring (`monitoring/`): metrics, alarms, drift.
    monitoring: bool = True
    """Prometheus metrics and alarm evaluation; off only to measure their overhead."""
    alarm_rules: Path = DEFAULT_MONITORING_DIR / "alarms.yml"
    reference_profile: Path = DEFAULT_MONITORING_DIR / "reference.json"
    """The training data's feature profile that drift is measured against (`monitor baseline`)."""
    alarm_step_s: float = 10.0
    """Event time between two evaluations of the alarm rules."""
    redo_window_s: float = 30.0
    """A voice search followed by another one (or a typed one) within this is a redo (a switch)."""
    alert_webhook_url: str = ""
    """Alarm transitions are POSTed here as JSON when set (they are always logged)."""
    trust_client_time: bool = False
    """Take each request's event time from its `X-Event-Time` header: for replays faster than real
    time only, never for production traffic."""
    fault_injection: bool = False
    """Enable `POST /v1/admin/faults` (a slow model on demand) for alarm drills."""
    # The model registry (`serving/lifecycle`): MLflow.
    mlflow_tracking_uri: str = ""
    """An MLflow tracking server or database; empty: embedded SQLite under `mlflow_dir`. MLflow's
    own `MLFLOW_TRACKING_URI` is honoured when this is not set."""
    mlflow_dir: Path = DEFAULT_STATE_DIR / "mlflow"
    """The embedded store's database and artifacts (registered models live here)."""
    registry_name: str = "voice-search"
    """The registered model whose aliases (champion, challenger, previous) the service follows."""
    challenger_dir: str = ""
    """A second model folder loaded beside the champion (`model_dir`) for shadow or canary."""
    rollout_mode: str = "off"
    """off, shadow (the challenger hears every voice search after the answer) or canary."""
    canary_share: float = 0.0
    """Share of sessions the challenger answers in canary mode (sticky by session id)."""
    canary_auto: bool = False
    """Ramp the canary share while its gates hold and roll back when one fails (`canary_*`)."""
    canary_steps: str = "0.05,0.25,0.5,1"
    """The ramp: shares of sessions, in order; after the last one held, the challenger is promoted."""
    canary_hold_s: float = 120.0
    """Event time every gate must pass at a share before the ramp moves on."""
    canary_window_s: float = 120.0
    canary_min_samples: int = 20
    """Voice searches each slot needs in the window before a gate judges at all."""
    canary_step_s: float = 5.0
    """How often (wall time) the canary controller judges."""
    shadow_max_queue: int = 8
    """Clips waiting for the challenger in shadow mode; beyond this they are dropped, not waited for."""
    automation: str = "full"
    """human_only, shadow, assist, partial or full (serving/lifecycle/review.py): who answers."""
    review_confidence_threshold: float = 0.95
    """In partial automation, requests below this confidence go to a person
    (scripts/calibrate_automation.py picks it from labelled data: for the bundled model 0.95 is the
    lowest threshold whose answers are 90% exact; docs/benchmarks.md)."""
    golden_dir: Path = DEFAULT_STATE_DIR / "golden"
    """Frozen golden sets (`voice-search data freeze`): every retrain gate scores on all of them."""
    retrain_replay: str = "corpus/train.jsonl:0.5,corpus/real_train.jsonl:1"
    """Original training data replayed beside new labels in `voice-search retrain`, so that nothing
    is forgotten: comma-separated `manifest[:weight]`, relative to the working directory. With
    `retrain_new_weight`, the recipe that passed the gate in docs/benchmarks.md ("Retraining")."""
    retrain_new_weight: float = 0.5
    """Sampling weight of the new labels against the replay's weights."""
    retrain_freeze_layers: int = 1
    """Transformer layers (and everything below them) a retrain leaves as they are. 1 keeps the
    conv front end, the positional convolution and the first layer: with the Whisper transplant
    as champion, a retrain of every layer broke Speech Commands past the gate's margin and this
    one passed (docs/benchmarks.md, "With the GPU-fine-tuned transplant as champion")."""
    retrain_auto: bool = False
    """Start `voice-search retrain` in the background when a trigger fires (serving/lifecycle/triggers.py)."""
    retrain_on_alarms: str = "null_transcripts,new_vocabulary,switch_to_typing"
    """Alarm rules that trigger a retrain once they have fired for `retrain_alarm_for_s`."""
    retrain_alarm_for_s: float = 600.0
    retrain_new_labels: int = 200
    """New strong labels (corrections, reviews) that trigger a retrain on their own; 0: never."""
    retrain_cooldown_s: float = 6 * 3600.0
    """Event time after a triggered start before the next may start, whatever fires."""
    retrain_max_running: int = 1
    retrain_check_s: float = 30.0
    """How often (wall time) the trigger is checked."""
    retrain_since: str = "7d"
    """The span of production labels a triggered retrain exports."""
    retrain_steps: int = 300
    retrain_deploy: str = "shadow"
    """What a triggered retrain does with a challenger that passed its gate: none (registered
    only), shadow, or canary (shadow for `retrain_shadow_s` of event time, then the automatic canary)."""
    retrain_shadow_s: float = 600.0
    retrain_max_rtf_ratio: float = 1.3
    """The gate's speed limit for a triggered retrain: the challenger's real-time factor over the
    champion's, measured side by side."""
    public_url: str = ""
    """This server's URL for the jobs it starts (a retrain hands its challenger back there);
    empty: http://host:port."""
    admin_token: str = ""
    """Bearer token for the rollout admin routes (`/v1/admin/rollout`, `/v1/admin/audit`); empty
    disables them (403), it never leaves them open."""

    def __post_init__(self) -> None:
        if self.device not in get_args(Device):
            raise ValueError(f"device must be one of {get_args(Device)}, not {self.device!r}")
        positive = (
            *("max_clip_s", "batch_size", "api_max_clip_s", "max_upload_bytes", "beam_size"),
            *("micro_batch_size", "max_queue", "search_limit", "audio_retention_days"),
            *("alarm_step_s", "redo_window_s", "shadow_max_queue"),
            *("canary_hold_s", "canary_window_s", "canary_min_samples", "canary_step_s"),
            *("retrain_alarm_for_s", "retrain_max_running", "retrain_check_s", "retrain_steps"),
            "retrain_shadow_s",
            "retrain_max_rtf_ratio",
            *("stream_endpoint_ms", "stream_partial_ms", "stream_left_context_s", "stream_max_concurrent"),
            *("stream_idle_timeout_s", "stream_send_queue"),
            "retrain_new_weight",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        if self.rollout_mode not in ROLLOUT_MODES:
            raise ValueError(f"rollout_mode must be one of {ROLLOUT_MODES}, not {self.rollout_mode!r}")
        if not self.ramp_steps or not all(0 < x <= 1 for x in self.ramp_steps):
            raise ValueError(f"canary_steps must be shares in (0, 1], not {self.canary_steps!r}")
        if self.retrain_deploy not in ("none", "shadow", "canary"):
            raise ValueError(f"retrain_deploy must be none, shadow or canary, not {self.retrain_deploy!r}")
        if self.retrain_auto and self.retrain_deploy != "none" and not self.admin_token:
            raise ValueError("retrain_deploy hands challengers over through the admin API: set admin_token")
        if self.automation not in AUTOMATION_LEVELS:
            raise ValueError(f"automation must be one of {AUTOMATION_LEVELS}, not {self.automation!r}")
        if self.automation in SENDS_TO_PEOPLE and not self.retain_audio:
            raise ValueError(
                f"automation {self.automation} sends audio to people: it needs retain_audio=true"
            )
        if not 0 <= self.canary_share <= 1:
            raise ValueError(f"canary_share must be between 0 and 1, not {self.canary_share}")
        if min(self.retrain_cooldown_s, self.retrain_new_labels, self.retrain_freeze_layers) < 0:
            raise ValueError("retrain_cooldown_s, retrain_new_labels and retrain_freeze_layers must be >= 0")
        if self.event_store_url and not self.event_store_url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"event_store_url must be a postgresql:// URL, not {self.event_store_url!r}")
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads must be >= 0 (0: torch's default), not {self.torch_threads}")
        if min(self.micro_batch_wait_ms, self.spot_char_bonus) < 0:
            raise ValueError("micro_batch_wait_ms and spot_char_bonus must be >= 0")
        if not all(
            0 <= x <= 1 for x in (self.search_min_score, self.search_min_match, self.spot_carrier_floor)
        ):
            raise ValueError("search_min_score, search_min_match and spot_carrier_floor must be in [0, 1]")

    def spotting(self, pack: "DomainPack") -> SpotOptions | None:
        """How voice queries spot `pack`'s names, as configured; None when spotting is off."""
        return pack.spotting(self.spot_char_bonus, self.spot_carrier_floor) if self.spot_catalog else None

    def open_event_store(self) -> "EventStore":
        """The store these settings name (PostgreSQL by URL, else SQLite at `db_path`)."""
        url = self.event_store_url
        if url and url.startswith(("postgresql://", "postgres://")):
            from monitoring.postgres import PostgresEventStore  # psycopg only where it is used

            return PostgresEventStore(url)
        if url:
            raise EventStoreError(
                f"the event store URL must start with postgresql://, not {url.split(':')[0]!r}"
            )
        return SQLiteEventStore(self.db_path)

    @property
    def audio_dir(self) -> Path:
        return self.db_path.parent / "audio"

    @property
    def retained_audio_dir(self) -> Path | None:
        """Where requests' audio is kept: `audio_dir` when retention is on, else None."""
        return self.audio_dir if self.retain_audio else None

    @property
    def ramp_steps(self) -> tuple[float, ...]:
        try:
            return tuple(sorted(float(x) for x in self.canary_steps.split(",") if x.strip()))
        except ValueError:
            return ()

    @property
    def server_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    def to_env(self) -> dict[str, str]:
        """The environment of a child process that must see exactly these settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        for f in fields(self):
            value = getattr(self, f.name)
            env[ENV_PREFIX + f.name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    @property
    def replay_sources(self) -> list[str]:
        return [s.strip() for s in self.retrain_replay.split(",") if s.strip()]

    @property
    def review_path(self) -> Path:
        return self.db_path.parent / "review.sqlite3"

    @property
    def labels_dir(self) -> Path:
        """Reviewed clips and their labels (training data, kept beyond the audio retention)."""
        return self.db_path.parent / "labels"

    @property
    def audit_path(self) -> Path:
        """The audit log of deployment decisions, beside the event store."""
        return self.db_path.parent / "audit.sqlite3"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Defaults overridden by `VOICE_SEARCH_*`; raises `ValueError` naming a bad variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            try:
                values[f.name] = _parse(raw, f.default)
            except ValueError as e:
                raise ValueError(
                    f"invalid {ENV_PREFIX}* setting: {ENV_PREFIX}{f.name.upper()}={raw!r}: {e}"
                ) from e
        if "mlflow_tracking_uri" not in values and env.get("MLFLOW_TRACKING_URI"):
            values["mlflow_tracking_uri"] = env["MLFLOW_TRACKING_URI"]
        try:
            return cls(**values)
        except ValueError as e:
            raise ValueError(f"invalid {ENV_PREFIX}* setting: {e}") from e


def _parse(raw: str, default: Any) -> Any:
    """Parse `raw` as the type of the field's default (bool, int, float, Path or str)."""
    if isinstance(default, bool):
        if raw.strip().lower() not in _TRUE | _FALSE:
            raise ValueError("expected true or false")
        return raw.strip().lower() in _TRUE
    if isinstance(default, int | float | Path):
        return type(default)(raw)
    return raw
