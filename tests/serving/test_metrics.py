"""Prometheus /metrics and the alarm endpoints of a real server, driven over HTTP."""

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.local_server import Server, running_server
from tests.serving.webhook import Webhook, webhook_server
from tests.signals import encode, espeak, silence

pytestmark = pytest.mark.server

RULES = """
rules:
  - name: client_errors
    metric: client_error_ratio
    window: 1m
    comparator: ">"
    threshold: 0.3
    severity: warning
    min_samples: 5
  - name: server_errors
    metric: server_error_ratio
    window: 1m
    comparator: ">"
    threshold: 0.01
    severity: critical
    min_samples: 3
"""


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    with webhook_server() as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, webhook: Webhook) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("metrics")
    rules = state / "alarms.yml"
    rules.write_text(RULES)
    settings = {"alarm_rules": str(rules), "alarm_step_s": "1", "alert_webhook_url": webhook.url}
    with running_server(state, **settings) as running:
        yield running


def samples(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by (name, labels)."""
    response = httpx.get(server.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(
    all_samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return all_samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_inputs_and_outputs_are_counted(server: Server, tmp_path: Path) -> None:
    speech, rate = espeak("weather in paris")
    wav = encode(speech, rate)
    before = samples(server)
    for _ in range(3):
        ok = httpx.post(
            server.url + "/v1/search",
            params={"session_id": "m1"},
            content=wav,
            headers={"Content-Type": "audio/wav"},
            timeout=60,
        )
        assert ok.status_code == 200
    typed = httpx.post(server.url + "/v1/search/text", json={"session_id": "m1", "query": "weather in paris"})
    assert typed.status_code == 200
    bad = httpx.post(
        server.url + "/v1/search",
        params={"session_id": "m1"},
        content=b"not audio",
        headers={"Content-Type": "audio/wav"},
    )
    assert bad.status_code in (415, 422)
    after = samples(server)

    def grew(name: str, by: float, **labels: str) -> None:
        assert value(after, name, **labels) - value(before, name, **labels) == by, name

    grew("voice_search_requests_total", 3, route="/v1/search", status="200")
    grew("voice_search_requests_total", 1, route="/v1/search", status=str(bad.status_code))
    grew("voice_search_request_duration_seconds_count", 4, route="/v1/search")
    grew("voice_search_clip_sample_rate_total", 3, sample_rate_hz=str(rate))
    grew("voice_search_clip_duration_seconds_count", 3)
    grew("voice_search_clip_rms_dbfs_count", 3)
    # The second and third voice searches redo the first; the typed one switches to typing.
    grew("voice_search_redo_total", 2)
    grew("voice_search_switch_to_typing_total", 1)
    assert value(after, "voice_search_stage_duration_seconds_count", stage="asr") >= 3
    assert value(after, "voice_search_stage_duration_seconds_count", stage="search") >= 1
    assert value(after, "voice_search_process_resident_memory_bytes") > 100e6
    assert value(after, "voice_search_process_cpu_seconds_total") > 0
    assert any(name == "voice_search_model_load_seconds" and v > 0 for (name, _), v in after.items())
    assert value(after, "voice_search_requests_in_flight") == 0
    assert ("voice_search_queue_depth", frozenset()) in after


def test_null_transcripts_and_empty_audio_are_counted(server: Server) -> None:
    before = samples(server)
    quiet = httpx.post(
        server.url + "/v1/search",
        params={"session_id": "m2"},
        content=encode(silence(1.0), 16_000),
        headers={"Content-Type": "audio/wav"},
        timeout=60,
    )
    assert quiet.status_code == 200 and quiet.json()["null_transcript"]
    empty = httpx.post(
        server.url + "/v1/search",
        params={"session_id": "m2"},
        content=b"",
        headers={"Content-Type": "audio/wav"},
    )
    assert empty.status_code == 400
    after = samples(server)
    null_before = sum(v for (n, _), v in before.items() if n == "voice_search_null_transcripts_total")
    null_after = sum(v for (n, _), v in after.items() if n == "voice_search_null_transcripts_total")
    assert null_after - null_before == 1
    assert (
        value(after, "voice_search_empty_audio_total", reason="empty")
        - value(before, "voice_search_empty_audio_total", reason="empty")
        == 1
    )
    assert (
        value(after, "voice_search_empty_audio_total", reason="all_zero")
        - value(before, "voice_search_empty_audio_total", reason="all_zero")
        == 1
    )


def test_an_alarm_fires_is_served_and_notified_then_stays_quiet_for_a_healthy_rule(
    server: Server, webhook: Webhook
) -> None:
    for _ in range(8):
        httpx.post(
            server.url + "/v1/search",
            params={"session_id": "m3"},
            content=b"\x00garbage",
            headers={"Content-Type": "audio/wav"},
        )
    deadline = 30
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        alerts = httpx.get(server.url + "/v1/alerts").json()
        states = {a["rule"]: a for a in alerts["alerts"]}
        if states.get("client_errors", {}).get("state") == "firing":
            break
        time.sleep(0.5)
    assert states["client_errors"]["state"] == "firing", alerts
    assert states["client_errors"]["value"] > 0.3
    assert states["server_errors"]["state"] == "ok"
    firing = samples(server)
    assert value(firing, "voice_search_alert_firing", alert="client_errors", severity="warning") == 1
    assert value(firing, "voice_search_alert_firing", alert="server_errors", severity="critical") == 0
    assert any(t["rule"] == "client_errors" and t["firing"] for t in alerts["history"])
    while time.monotonic() - started < deadline and not webhook.received:
        time.sleep(0.2)
    assert any(r["alarm"]["rule"] == "client_errors" and r["alarm"]["firing"] for r in webhook.received)
    # Reading the monitors is not traffic: it leaves no events and no request counts.
    before = value(samples(server), "voice_search_requests_total", route="/v1/alerts", status="200")
    assert before == 0


def test_unknown_paths_share_one_label(server: Server) -> None:
    for n in range(3):
        assert httpx.get(f"{server.url}/v1/probe-{n}").status_code == 404
    after = samples(server)
    assert value(after, "voice_search_requests_total", route="other", status="404") == 3
    assert not any("probe" in dict(labels).get("route", "") for _, labels in after)


def test_monitoring_endpoints_refuse_bad_parameters(server: Server) -> None:
    for params in ({"span": "soon"}, {"span": "0s"}, {"span": "30d"}, {"points": "1"}):
        response = httpx.get(server.url + "/v1/monitoring/series", params=params)
        assert response.status_code == 422, params
        assert response.json()["error"]["type"] == "invalid_request"
    faults = httpx.post(server.url + "/v1/admin/faults", json={"asr_delay_ms": 100})
    assert faults.status_code == 404  # fault injection is off unless enabled
