"""The canary for Kubernetes: an Argo Rollouts `Rollout` and its `AnalysisTemplate`, generated from
the same ramp and gate policy the service's own canary controller uses (serving/lifecycle/canary.py,
monitoring/canary_gates.py), over the same Prometheus metrics.

On Kubernetes, Argo Rollouts shifts traffic between two ReplicaSets of the service instead of the
service routing sessions itself; each pod's metrics carry its ReplicaSet's template hash (Argo's
`rollouts-pod-template-hash` pod label, kept by the scrape as `rollouts_pod_template_hash`), so a
gate compares the canary's hash with the stable one's. What carries over from the service's gates,
and what cannot:
- ratio gates (server errors, null transcripts): the canary may be worse by at most the margin.
  PromQL has no two-proportion z-test; the margin alone is the rule, and `failureLimit` with
  repeated measurements stands in for the test's protection against one unlucky window;
- p95 latency: at most the stable p95 times the factor plus the slack;
- mean confidence: at least the stable mean minus the margin;
- minimum samples: a window with fewer voice searches on either side measures 0 (passes), since
  Argo's steps advance with time and cannot wait for samples the way the service's controller does;
  nor can PromQL take the service's early failure on a few searches (an exact binomial tail), so a
  silent canary fails here only once the guard's sample is in.
Redo and switch-to-typing are per-session signals the service derives from its event store; they
are not in /metrics, so only the service's own controller judges them.
"""

from collections.abc import Sequence
from typing import Any

from monitoring.canary_gates import GatePolicy

NAME = "voice-search"
HASH_LABEL = "rollouts_pod_template_hash"
VOICE = 'kind="voice_search"'


def _sel(metric: str, extra: str = "", *, side: str) -> str:
    matchers = ",".join(m for m in (extra, f'{HASH_LABEL}="{{{{args.{side}-hash}}}}"') if m)
    return f"{metric}{{{matchers}}}"


def _ratio(numerator: tuple[str, str], denominator: tuple[str, str], side: str, window: str) -> str:
    num = f"sum(increase({_sel(*numerator, side=side)}[{window}]))"
    den = f"sum(increase({_sel(*denominator, side=side)}[{window}]))"
    return f"(({num} or vector(0)) / {den})"


def _enough(min_samples: int, window: str) -> str:
    """`and` guard: both sides have at least `min_samples` voice searches in the window."""
    side = "sum(increase({}[{}])) >= {}"
    searches = "voice_search_searches_total"
    return " and on() ".join(
        side.format(_sel(searches, VOICE, side=s), window, min_samples) for s in ("canary", "stable")
    )


def analysis_queries(gates: GatePolicy, window: str) -> dict[str, tuple[str, str]]:
    """Gate name -> (PromQL, successCondition); each query is a number, 0 when too few samples."""
    guard = _enough(gates.min_samples, window)
    requests = ("voice_search_requests_total", 'route="/v1/search"')
    errors = ("voice_search_requests_total", 'route="/v1/search",status=~"5.."')
    searches = ("voice_search_searches_total", VOICE)
    ratios = {
        "server_errors": (errors, requests),
        "null_transcripts": (("voice_search_null_transcripts_total", ""), searches),
    }
    queries: dict[str, tuple[str, str]] = {}
    for name, (numerator, denominator) in ratios.items():
        difference = (
            f"{_ratio(numerator, denominator, 'canary', window)} - "
            f"{_ratio(numerator, denominator, 'stable', window)}"
        )
        queries[name] = (
            f"(({difference}) and on() ({guard})) or on() vector(0)",
            f"result[0] <= {gates.ratio_margin}",
        )

    def p95(side: str) -> str:
        buckets = _sel("voice_search_request_duration_seconds_bucket", 'route="/v1/search"', side=side)
        return f"histogram_quantile(0.95, sum by (le) (rate({buckets}[{window}])))"

    excess = f"{p95('canary')} - ({p95('stable')} * {gates.latency_factor} + {gates.latency_slack_s})"
    queries["latency_p95_s"] = (f"(({excess}) and on() ({guard})) or on() vector(0)", "result[0] <= 0")

    def mean_confidence(side: str) -> str:
        total = f"sum(increase({_sel('voice_search_transcript_confidence_sum', side=side)}[{window}]))"
        count = f"sum(increase({_sel('voice_search_transcript_confidence_count', side=side)}[{window}]))"
        return f"({total} / {count})"

    drop = f"{mean_confidence('stable')} - {mean_confidence('canary')}"
    queries["mean_confidence"] = (
        f"(({drop}) and on() ({guard})) or on() vector(0)",
        f"result[0] <= {gates.confidence_margin}",
    )
    return queries


def analysis_template(gates: GatePolicy, window: str, interval: str, prometheus: str) -> dict[str, Any]:
    metrics = [
        {
            "name": name,
            "interval": interval,
            "failureLimit": 1,
            "successCondition": condition,
            "provider": {"prometheus": {"address": prometheus, "query": query}},
        }
        for name, (query, condition) in analysis_queries(gates, window).items()
    ]
    args = [{"name": "canary-hash"}, {"name": "stable-hash"}]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": f"{NAME}-gates"},
        "spec": {"args": args, "metrics": metrics},
    }


def rollout(steps: Sequence[float], hold: str, image: str) -> dict[str, Any]:
    canary_steps: list[dict[str, Any]] = []
    for share in steps:
        canary_steps.append({"setWeight": round(100 * share)})
        if share < 1:
            canary_steps.append({"pause": {"duration": hold}})
    labels = {"app": NAME}
    container = {
        "name": NAME,
        "image": image,
        "ports": [{"name": "http", "containerPort": 8000}],
        "env": [{"name": "VOICE_SEARCH_HOST", "value": "0.0.0.0"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
    }
    hashes = [
        {"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}},
        {"name": "stable-hash", "valueFrom": {"podTemplateHashValue": "Stable"}},
    ]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": NAME},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            "strategy": {
                "canary": {
                    "steps": canary_steps,
                    "analysis": {
                        "templates": [{"templateName": f"{NAME}-gates"}],
                        "startingStep": 1,
                        "args": hashes,
                    },
                }
            },
        },
    }


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME},
        "spec": {"selector": {"app": NAME}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def argo_manifests(
    gates: GatePolicy,
    steps: Sequence[float],
    hold_s: float,
    window_s: float,
    image: str = "voice-search:latest",
    prometheus: str = "http://prometheus.monitoring:9090",
) -> list[dict[str, Any]]:
    """The Rollout, its AnalysisTemplate and the Service, ready for `kubectl apply -f`."""
    window, hold = f"{round(window_s)}s", f"{round(hold_s)}s"
    interval = f"{max(1, round(window_s / 2))}s"
    return [analysis_template(gates, window, interval, prometheus), rollout(steps, hold, image), service()]
