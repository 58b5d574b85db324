"""The Prometheus and Grafana export: the committed files follow the alarm rules, promtool accepts and
unit-tests them, and a real Prometheus scraping a real server sees an alert fire.

promtool and prometheus come from the Debian package `prometheus` (the Makefile's SYSTEM_PACKAGES);
without them these tests fail, they do not skip: CI must run them.
"""

import dataclasses
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from monitoring.alarms import Rule, load_rules
from monitoring.export import (
    ARGO_FILE,
    CONFIG_FILE,
    DASHBOARD_FILE,
    DATASOURCE,
    PROMQL,
    RULES_FILE,
    SLOT_PROMQL,
    VERDICT_ONLY,
    alert_expr,
    deploy_files,
    grafana_dashboard,
    prom_duration,
    prometheus_config,
    prometheus_rules,
    render_yaml,
)
from monitoring.features import WINDOW_METRICS
from serving.cli import main
from serving.local_server import free_port, running_server

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "monitoring" / "deploy"
ALARMS = REPO / "data" / "monitoring" / "alarms.yml"
UNIT_TESTS = DEPLOY / "prometheus-rules.test.yml"


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL query of a dashboard (to check them with promtool)."""
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: install the Debian package prometheus (make system-deps)")
    return path


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_binary("promtool"), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def _passes(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def rules() -> list[Rule]:
    return load_rules(ALARMS)


def test_the_committed_deploy_files_are_what_the_alarm_rules_export(rules: list[Rule]) -> None:
    for name, text in deploy_files(rules).items():
        committed = (DEPLOY / name).read_text()
        assert committed == text, f"{DEPLOY / name} is stale: run `voice-search monitor export`"


def test_every_alert_and_panel_has_its_rules_threshold_severity_and_window(rules: list[Rule]) -> None:
    alerts = {a["alert"]: a for a in prometheus_rules(rules)["groups"][0]["rules"]}
    panels = {p["title"].split(":")[0]: p for p in grafana_dashboard(rules)["panels"] if p["type"] != "row"}
    split = [f"{r.name}_by_slot" for r in rules if r.per_slot and r.metric in SLOT_PROMQL]
    assert split == ["null_transcripts_by_slot"]  # switch to typing is split by the service only
    assert list(alerts) == [r.name for r in rules] + split
    by_slot = alerts["null_transcripts_by_slot"]
    assert "sum by (slot)" in by_slot["expr"] and "and on (slot)" in by_slot["expr"]
    for rule in rules:
        alert = alerts[rule.name]
        assert f"{rule.comparator} {float(rule.threshold)!r}" in alert["expr"]
        assert alert["labels"] == {"severity": rule.severity}
        assert {"summary", "description"} <= set(alert["annotations"])
        if rule.metric in PROMQL:
            assert f"[{prom_duration(rule.window_s)}]" in alert["expr"]
            assert f">= {rule.min_samples}" in alert["expr"]
        else:  # the service's verdict, which applied min_samples itself
            assert f'voice_search_alert_firing{{alert="{rule.name}"}} == 1' in alert["expr"]
        steps = panels[rule.name]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1]["value"] == rule.threshold
        assert (
            panels[rule.name]["datasource"] == DATASOURCE == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        )
    software = {
        "Request rate",
        "p95 latency",
        "Requests in flight",
        "Recognizer queue depth",
        "Resident memory",
    }
    assert software | {"CPU"} <= set(panels)


def test_durations_in_promql_form() -> None:
    assert [prom_duration(s) for s in (300, 60, 90, 0.5, 7200, 86400, 1.25)] == [
        "5m",
        "1m",
        "90s",
        "500ms",
        "2h",
        "1d",
        "1250ms",
    ]


def _every_metric_and_drift() -> list[Rule]:
    """A rule on every window metric (either comparator) and a drift rule: all the mappings."""
    on_metrics = [
        Rule(f"r_{m}", 120.0 + i, 0.5, "<" if i % 2 else ">", min_samples=3, metric=m)
        for i, m in enumerate(WINDOW_METRICS)
    ]
    return [*on_metrics, Rule("r_drift", 90.0, 0.25, drift="rms_dbfs", test="psi")]


def test_promtool_accepts_the_rules_config_and_every_dashboard_query(tmp_path: Path) -> None:
    assert set(PROMQL) | VERDICT_ONLY == set(WINDOW_METRICS)
    assert sorted(VERDICT_ONLY) == ["click_ratio", "transcript_oov_ratio", "typed_oov_ratio"]
    _passes(promtool("check", "rules", DEPLOY / RULES_FILE))
    _passes(promtool("check", "config", DEPLOY / CONFIG_FILE))  # also loads the rule file it names
    everything = tmp_path / "every-metric.yml"
    everything.write_text(render_yaml(prometheus_rules(_every_metric_and_drift())))
    _passes(promtool("check", "rules", everything))
    # Dashboard queries, as recording rules ($__rate_interval is Grafana's, filled in at query time).
    queries = dashboard_exprs(grafana_dashboard(_every_metric_and_drift()))
    queries += dashboard_exprs(grafana_dashboard([]))
    records = [
        {"record": f"dashboard:query{i}", "expr": q.replace("$__rate_interval", "1m")}
        for i, q in enumerate(queries)
    ]
    dashboard = tmp_path / "dashboard-queries.yml"
    dashboard.write_text(render_yaml({"groups": [{"name": "dashboard", "rules": records}]}))
    _passes(promtool("check", "rules", dashboard))


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", UNIT_TESTS)
    _passes(result)
    assert "SUCCESS" in result.stdout


def test_promtool_rejects_a_malformed_rule_and_the_unit_tests_catch_a_moved_threshold(
    tmp_path: Path, rules: list[Rule]
) -> None:
    document = prometheus_rules(rules)
    document["groups"][0]["rules"][0]["expr"] = alert_expr(rules[0]).replace(" >", " > 0..5 >", 1)
    broken = tmp_path / "broken.yml"
    broken.write_text(render_yaml(document))
    result = promtool("check", "rules", broken)
    assert result.returncode != 0
    assert rules[0].name in result.stdout + result.stderr

    # The unit tests check thresholds, not only syntax: null transcripts at 90% stop firing when
    # the threshold moves above that.
    moved = [dataclasses.replace(r, threshold=0.95) if r.name == "null_transcripts" else r for r in rules]
    (tmp_path / RULES_FILE).write_text(render_yaml(prometheus_rules(moved)))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    result = promtool("test", "rules", tmp_path / UNIT_TESTS.name)
    assert result.returncode != 0
    assert "alertname: null_transcripts" in result.stdout + result.stderr


def test_the_export_command_writes_the_four_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "export", "--rules", str(ALARMS), "--out", str(tmp_path / "deploy")]) == 0
    written = {p.name: p.read_text() for p in (tmp_path / "deploy").iterdir()}
    assert written == deploy_files(load_rules(ALARMS))
    assert {RULES_FILE, DASHBOARD_FILE, CONFIG_FILE, ARGO_FILE} == set(written)
    assert "wrote" in capsys.readouterr().out
    bad = tmp_path / "bad.yml"
    bad.write_text("rules:\n  - name: x\n    metric: nope\n    window: 1m\n    threshold: 1\n")
    assert main(["monitor", "export", "--rules", str(bad), "--out", str(tmp_path / "other")]) == 2
    assert "unknown metric" in capsys.readouterr().err


# A real Prometheus, scraping a real server every second.

LIVE_RULES = """
rules:
  - name: client_errors
    metric: client_error_ratio
    window: 20s
    comparator: ">"
    threshold: 0.3
    severity: warning
    min_samples: 5
  - name: new_vocabulary
    metric: typed_oov_ratio
    window: 20s
    comparator: ">"
    threshold: 0.2
    severity: info
    min_samples: 3
  - name: server_errors
    metric: server_error_ratio
    window: 20s
    comparator: ">"
    threshold: 0.01
    severity: critical
    min_samples: 5
"""
FIRING_DEADLINE_S = 120


@contextmanager
def running_prometheus(state: Path, config: dict[str, Any]) -> Iterator[str]:
    """`prometheus` on a free localhost port with `config`; yields its URL, stops it after."""
    config_path = state / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = state / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                _binary("prometheus"),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={state / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus was not ready within 60 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _alerts(prometheus: str) -> dict[str, dict[str, Any]]:
    alerts = httpx.get(prometheus + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return {a["labels"]["alertname"]: a for a in alerts}


def _bad_traffic(server_url: str, client: httpx.Client) -> None:
    """Two refused uploads (415) and one typed search of words no training text had."""
    for _ in range(2):
        refused = client.post(
            server_url + "/v1/search",
            params={"session_id": "live"},
            content=b"not audio",
            headers={"content-type": "audio/wav"},
        )
        assert refused.status_code == 415, refused.text
    typed = client.post(
        server_url + "/v1/search/text", json={"session_id": "live", "query": "zqxv plorbt wexx"}
    )
    assert typed.status_code == 200, typed.text


@pytest.mark.server
def test_a_real_prometheus_scraping_the_service_fires_the_exported_alerts(tmp_path: Path) -> None:
    """One alert computed in PromQL from /metrics (client errors) and one from the service's own
    verdict (typed OOV words) reach "firing"; the server-error alert stays quiet."""
    alarms = tmp_path / "alarms.yml"
    alarms.write_text(LIVE_RULES)
    rules_path = tmp_path / RULES_FILE
    rules_path.write_text(render_yaml(prometheus_rules(load_rules(alarms))))
    _binary("prometheus")  # fail before loading the model when it is missing
    with running_server(tmp_path, alarm_rules=str(alarms), alarm_step_s="1") as server:
        config = prometheus_config(
            server.url.removeprefix("http://"),
            str(rules_path),
            scrape_interval="1s",
            evaluation_interval="1s",
        )
        with running_prometheus(tmp_path, config) as prometheus, httpx.Client(timeout=30) as client:
            started = time.monotonic()
            alerts: dict[str, dict[str, Any]] = {}
            while time.monotonic() - started < FIRING_DEADLINE_S:
                _bad_traffic(server.url, client)
                alerts = _alerts(prometheus)
                if all(
                    alerts.get(n, {}).get("state") == "firing" for n in ("client_errors", "new_vocabulary")
                ):
                    break
                time.sleep(0.5)
            else:
                targets = httpx.get(prometheus + "/api/v1/targets", timeout=5).json()
                pytest.fail(
                    f"no firing alerts within {FIRING_DEADLINE_S} s: {alerts}\ntargets: {targets}\n"
                    f"prometheus log:\n{(tmp_path / 'prometheus.log').read_text()[-3000:]}"
                )
            assert alerts["client_errors"]["labels"]["severity"] == "warning"
            assert alerts["new_vocabulary"]["labels"]["severity"] == "info"
            assert "typed_oov_ratio is" in alerts["new_vocabulary"]["annotations"]["summary"]
            assert float(alerts["client_errors"]["value"]) > 0.3
            assert "server_errors" not in alerts
