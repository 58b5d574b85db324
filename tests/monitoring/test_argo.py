"""The exported Argo Rollouts canary (monitoring/deploy/argo-rollout.yml).

Validated four ways, since Argo's CRD schemas cannot be fetched offline:
- a schema validator: pydantic models of the Argo Rollouts v1alpha1 fields the manifest uses (as
  Argo documents them), with unknown fields forbidden, so a misspelt or misplaced key fails;
- promtool parses every analysis query, with the template's arguments filled in;
- promtool evaluates the gates on synthetic series of both ReplicaSets: a canary with many more
  null transcripts fails its gate, an equal one passes, and too few samples measure 0;
- every metric a query names is one the service exports.
"""

# ruff: noqa: N815 (the schema's field names are Argo's and Kubernetes' camelCase keys)

import re
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from monitoring.argo import analysis_queries
from monitoring.canary_gates import GatePolicy
from monitoring.export import ARGO_FILE
from monitoring.metrics import ServiceMetrics
from tests.monitoring.test_export import DEPLOY, _passes, promtool


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Meta(Strict):
    name: str
    labels: dict[str, str] | None = None


class PrometheusProvider(Strict):
    address: str = Field(pattern=r"^https?://")
    query: str


class Provider(Strict):
    prometheus: PrometheusProvider


class Metric(Strict):
    name: str
    interval: str = Field(pattern=r"^\d+[smh]$")
    failureLimit: int = Field(ge=0)
    successCondition: str = Field(pattern=r"^result\[0\] (<=|>=|<|>) -?[\d.]+$")
    provider: Provider


class Arg(Strict):
    name: str


class AnalysisSpec(Strict):
    args: list[Arg]
    metrics: list[Metric] = Field(min_length=1)


class AnalysisTemplate(Strict):
    apiVersion: Literal["argoproj.io/v1alpha1"]
    kind: Literal["AnalysisTemplate"]
    metadata: Meta
    spec: AnalysisSpec


class Pause(Strict):
    duration: str = Field(pattern=r"^\d+[smh]$")


class Step(Strict):
    setWeight: int | None = Field(None, ge=0, le=100)
    pause: Pause | None = None


class HashValue(Strict):
    podTemplateHashValue: Literal["Stable", "Latest"]


class AnalysisArg(Strict):
    name: str
    valueFrom: HashValue


class TemplateRef(Strict):
    templateName: str


class RolloutAnalysis(Strict):
    templates: list[TemplateRef]
    startingStep: int = Field(ge=0)
    args: list[AnalysisArg]


class Canary(Strict):
    steps: list[Step]
    analysis: RolloutAnalysis


class Strategy(Strict):
    canary: Canary


class Probe(Strict):
    httpGet: dict[str, str]


class Container(Strict):
    name: str
    image: str
    ports: list[dict[str, str | int]]
    env: list[dict[str, str]]
    readinessProbe: Probe
    livenessProbe: Probe


class PodSpec(Strict):
    containers: list[Container]


class PodTemplate(Strict):
    metadata: Meta | dict[str, dict[str, str]]
    spec: PodSpec


class RolloutSpec(Strict):
    replicas: int = Field(ge=1)
    selector: dict[str, dict[str, str]]
    template: PodTemplate
    strategy: Strategy


class Rollout(Strict):
    apiVersion: Literal["argoproj.io/v1alpha1"]
    kind: Literal["Rollout"]
    metadata: Meta
    spec: RolloutSpec


class ServicePort(Strict):
    name: str
    port: int
    targetPort: str | int


class ServiceSpec(Strict):
    selector: dict[str, str]
    ports: list[ServicePort]


class Service(Strict):
    apiVersion: Literal["v1"]
    kind: Literal["Service"]
    metadata: Meta
    spec: ServiceSpec


@pytest.fixture(scope="module")
def documents() -> list[dict]:  # type: ignore[type-arg]
    return list(yaml.safe_load_all((DEPLOY / ARGO_FILE).read_text()))


def test_the_manifest_validates_against_the_schema(documents: list[dict]) -> None:  # type: ignore[type-arg]
    template, rollout, service = documents
    AnalysisTemplate.model_validate(template)
    parsed = Rollout.model_validate(rollout)
    Service.model_validate(service)
    # The Rollout uses the template it ships with, and the ramp is the service's (5 -> 100%).
    assert parsed.spec.strategy.canary.analysis.templates[0].templateName == template["metadata"]["name"]
    weights = [s.setWeight for s in parsed.spec.strategy.canary.steps if s.setWeight is not None]
    assert weights == [5, 25, 50, 100]
    args = {a.name for a in parsed.spec.strategy.canary.analysis.args}
    assert args == {a["name"] for a in template["spec"]["args"]}
    broken = rollout | {"spec": rollout["spec"] | {"stratgy": rollout["spec"]["strategy"]}}
    with pytest.raises(ValueError, match="stratgy"):
        Rollout.model_validate(broken)


def _filled(query: str) -> str:
    return query.replace("{{args.canary-hash}}", "canary1").replace("{{args.stable-hash}}", "stable1")


def test_promtool_parses_every_analysis_query(documents: list[dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    metrics = documents[0]["spec"]["metrics"]
    rules = [
        {"record": f"argo:{m['name']}", "expr": _filled(m["provider"]["prometheus"]["query"])}
        for m in metrics
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "argo", "rules": rules}]}))
    _passes(promtool("check", "rules", path))


def test_the_null_transcript_gate_evaluated_by_promtool(tmp_path: Path) -> None:
    gates = GatePolicy()
    query = _filled(analysis_queries(gates, "2m")["null_transcripts"][0])
    rules = tmp_path / "rules.yml"
    rules.write_text(
        yaml.safe_dump({"groups": [{"name": "argo", "rules": [{"record": "gate", "expr": query}]}]})
    )

    def series(hash_: str, searches: int, nulls: int) -> list[dict[str, str]]:
        labels = f'kind="voice_search",rollouts_pod_template_hash="{hash_}"'
        return [
            {"series": f"voice_search_searches_total{{{labels}}}", "values": f"0+{searches}x10"},
            {"series": f'voice_search_null_transcripts_total{{rollouts_pod_template_hash="{hash_}"}}',
             "values": f"0+{nulls}x10"},
        ]  # fmt: skip

    def case(name: str, canary: tuple[int, int], stable: tuple[int, int], expected: float) -> dict:  # type: ignore[type-arg]
        return {
            "name": name, "interval": "1m",
            "input_series": series("canary1", *canary) + series("stable1", *stable),
            "promql_expr_test": [
                {"expr": "gate", "eval_time": "10m", "exp_samples": [{"labels": "gate", "value": expected}]}
            ],
        }  # fmt: skip

    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            # 60 searches a minute each: the canary's null ratio 0.5 against 0.1 -> 0.4, over the 0.05 margin.
            case("a deaf canary", (60, 30), (60, 6), 0.4),
            case("an equal canary", (60, 6), (60, 6), 0.0),
            # 5 a minute: 10 in the 2-minute window, under min_samples (20) -> 0, the gate passes.
            case("too few samples", (5, 5), (5, 0), 0.0),
        ],
    }
    path = tmp_path / "tests.yml"
    path.write_text(yaml.safe_dump(tests))
    _passes(promtool("test", "rules", path))
    assert gates.ratio_margin < 0.4  # the deaf canary's value fails the successCondition


def test_every_metric_in_the_queries_is_exported(documents: list[dict]) -> None:  # type: ignore[type-arg]
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    exported = {
        family.name + suffix
        for family in ServiceMetrics().registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }
    named: set[str] = set()
    for metric in documents[0]["spec"]["metrics"]:
        named |= set(re.findall(r"(voice_search_[a-z_]+)\{", metric["provider"]["prometheus"]["query"]))
    assert len(named) == 6 and named <= exported, named - exported
