"""The loop's story end to end (issue 16, the CI version): a real server with the tiny model, its
monitors, retraining trigger, registry and canary, and simulated users. A shock of new places
fires the new-vocabulary alarm, the alarm triggers a retrain (traffic time waits for it), a bad
deploy is rolled back by the canary's gates, and every request the users sent is an event."""

import json
from pathlib import Path

import pytest

from serving.cli import main
from serving.cli.simulate import SCENARIOS
from serving.simulation.scenarios import Change, Scenario

STORY = Path(__file__).parent / "scenarios" / "story.yml"


@pytest.mark.server
def test_the_story_shock_alarm_retrain_and_a_rolled_back_bad_deploy(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", str(STORY), "--out", str(tmp_path), "--set", f"model_dir={tiny_model_dir}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["events"] == summary["requests"] > 1000
    assert summary["detected_by"] == "new_vocabulary" and 0 < summary["time_to_detect_s"] < 180
    assert "new_vocabulary" not in summary["false_alarms"]
    assert summary["retrains"] == 1 and summary["paused_wall_s"] > 0
    assert summary["rollbacks"] == 1 and summary["promotions"] == 0
    assert 0 < summary["users_affected"] < 0.5  # the canary's share was 50%: the rollback came first

    record = json.loads((tmp_path / "story.json").read_text())
    kinds = [m["kind"] for m in record["markers"]]
    assert kinds.index("alarm") < kinds.index("retrain") < kinds.index("operator") < kinds.index("rollback")
    started = next(m for m in record["markers"] if m["label"].startswith("retrain_started"))
    assert "alarm new_vocabulary firing" in started["label"]
    assert (tmp_path / "story.png").stat().st_size > 10_000
    assert str(tmp_path / "story.png") in err and str(tmp_path / "story.json") in err  # says where
    page = (tmp_path / "story.html").read_text()
    assert page.count("<svg") == 5 and "retrain_started" in page


@pytest.mark.server
def test_reviewers_answer_what_partial_automation_sends_them(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The workload of partial automation: the share of voice searches sent to people, and how
    long they wait for the simulated reviewers (in traffic time); each review is a strong label."""
    review = STORY.parent / "review.yml"
    assert (
        main(["simulate", str(review), "--out", str(tmp_path), "--set", f"model_dir={tiny_model_dir}"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["share_to_people"] == 1.0 and summary["events"] == summary["requests"]
    # 90 sessions in 3 minutes against 2 reviewers at 10 s an item: the queue is worked, not emptied.
    assert 20 <= summary["reviewed"] < 90
    assert 0 < summary["queue_time_p50_s"] <= summary["queue_time_p95_s"] < 180
    labels = (tmp_path / "review" / "state" / "labels" / "reviews.jsonl").read_text().splitlines()
    assert len(labels) == summary["reviewed"]


def test_scenarios_load_and_shares_follow_their_changes() -> None:
    names = sorted(p.stem for p in SCENARIOS.glob("*.yml"))
    assert names == ["bad_deploy", "device", "drift", "partial", "shock", "steady"]
    scenarios = {name: Scenario.load(SCENARIOS / f"{name}.yml") for name in names}
    assert scenarios["steady"].shock_s is None and scenarios["shock"].shock_s == 600
    drift = scenarios["drift"]
    assert drift.new_item_share(599) == 0 and drift.new_item_share(600 + 1200) == pytest.approx(0.25)
    assert drift.new_item_share(3000) == pytest.approx(0.5) == drift.new_item_share(3500)
    assert scenarios["device"].device_share(700) == 0.3 and scenarios["device"].device_share(500) == 0
    assert scenarios["bad_deploy"].changes == (Change(at_s=600, deploy="degraded", share=0.05),)
    assert scenarios["shock"].settings["retrain_auto"] == "true"
    assert scenarios["partial"].reviewers.count == 6 and scenarios["steady"].reviewers.count == 0


def test_an_unknown_scenario_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "no-such-scenario"]) == 2
    assert "no scenario 'no-such-scenario'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("rate: 1\n", "KeyError: 'duration'"),
        ("- a list\n", "a scenario is a mapping"),
        ("duration: soon\nrate: 1\n", "ValueError"),
        ("duration: 1m\nrate: 1\nchanges: [{new_items: 0.5}]\n", "KeyError: 'at'"),
        ("duration: [1m\n", "ParserError"),
    ],
)
def test_a_malformed_scenario_is_a_usage_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, message: str
) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(body)
    assert main(["simulate", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"scenario {path}" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any server started


def test_a_set_without_a_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "steady", "--set", "rate"]) == 2
    assert "--set takes KEY=VALUE, not 'rate'" in capsys.readouterr().err
