"""Degrees of automation and the review queue on a real server: partial automation sends a
request to people (202), a reviewer lists it, listens, corrects and accepts; the review becomes a
strong label and its audio leaves the queue. Assist marks answers as suggestions; full answers."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page

from serving.cli import main
from serving.local_server import Server, running_server
from tests.serving.test_dashboard import browser, page  # noqa: F401 (fixtures)
from tests.signals import SPEECH_SAMPLE

pytestmark = pytest.mark.server
TOKEN = "reviewer-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Actor": "carol"}


def search(server: Server, session: str) -> httpx.Response:
    with SPEECH_SAMPLE.open("rb") as f:
        files = {"file": ("q.flac", f, "audio/flac")}
        return httpx.post(server.url + "/v1/search", files=files, data={"session_id": session}, timeout=60)


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("partial")
    # A threshold above any confidence: every request goes to a person.
    settings = {"automation": "partial", "review_confidence_threshold": "1.01", "retain_audio": "true",
                "admin_token": TOKEN}  # fmt: skip
    with running_server(state, **settings) as server:
        yield server


def test_partial_sends_low_confidence_requests_to_review_and_a_review_becomes_a_label(
    partial: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = search(partial, "review-1")
    assert sent.status_code == 202
    body = sent.json()
    assert body["sent_for_review"] is True and body["automation"] == "partial"
    assert body["transcript"] is None and body["hits"] == [] and body["review_id"]

    assert httpx.get(partial.url + "/v1/review", timeout=10).status_code == 401
    items = httpx.get(partial.url + "/v1/review", headers=AUTH, timeout=10).json()["items"]
    item = next(i for i in items if i["request_id"] == sent.headers["x-request-id"])
    assert item["status"] == "pending" and item["model_transcript"] is not None
    audio = httpx.get(partial.url + item["audio_url"], headers=AUTH, timeout=10)
    assert audio.status_code == 200 and audio.content == SPEECH_SAMPLE.read_bytes()

    unknown = httpx.post(partial.url + f"/v1/review/{item['id']}", headers=AUTH, timeout=10,
                         json={"transcript": "x", "item_id": "does-not-exist"})  # fmt: skip
    assert (
        unknown.status_code == 422
        and "no catalog item 'does-not-exist'" in unknown.json()["error"]["message"]
    )
    accepted = httpx.post(partial.url + f"/v1/review/{item['id']}", headers=AUTH, timeout=10,
                          json={"transcript": "Author of the danger trail, Philip Steels, etc."})  # fmt: skip
    assert accepted.status_code == 200 and accepted.json()["status"] == "done"
    assert accepted.json()["model_version"] == body["model_version"]  # the model whose attempt was reviewed
    assert accepted.json()["reviewer"] == "carol"
    assert not Path(item["audio_path"]).exists()  # reviewed: gone from the retention area
    again = httpx.post(
        partial.url + f"/v1/review/{item['id']}", headers=AUTH, json={"transcript": "x"}, timeout=10
    )
    assert again.status_code == 409
    assert (
        httpx.post(
            partial.url + "/v1/review/99999", headers=AUTH, json={"transcript": "x"}, timeout=10
        ).status_code
        == 404
    )

    # The workload: every voice search went to people (the threshold is above any confidence), and
    # the accepted one waited from its request to its review.
    stats = httpx.get(
        partial.url + "/v1/review/stats", headers=AUTH, params={"window": "1h"}, timeout=10
    ).json()
    assert stats["share_to_people"] == 1.0 and stats["sent_to_people"] == stats["voice_searches"] >= 1
    assert stats["reviewed"] == 1 and 0 < stats["queue_time_p50_s"] < 120
    assert httpx.get(partial.url + "/v1/review/stats", timeout=10).status_code == 401

    monkeypatch.setenv("VOICE_SEARCH_DB_PATH", str(partial.db_path))
    assert main(["labels", "export", "--out", str(tmp_path / "labels"), "--since", "1d"]) == 0
    exported = capsys.readouterr().out
    assert '"review": 1' in exported


def test_assist_marks_the_answer_as_a_suggestion(tmp_path: Path) -> None:
    with running_server(tmp_path, automation="assist") as server:
        answer = search(server, "assist-1")
        assert answer.status_code == 200
        assert answer.json()["needs_confirmation"] is True and answer.json()["automation"] == "assist"


def test_people_first_automation_needs_audio_retention(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="needs retain_audio=true"),
        running_server(tmp_path, automation="human_only"),
    ):
        pass


@pytest.mark.browser
def test_the_review_page_lists_plays_corrects_and_accepts(partial: Server, page: Page) -> None:  # noqa: F811
    queued = search(partial, "review-page").json()["review_id"]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(partial.url + "/review")
    page.fill("#token", TOKEN)
    page.fill("#reviewer", "dave")
    page.click("#load")
    item = page.wait_for_selector(f'.item[data-id="{queued}"]')
    assert item is not None
    page.wait_for_selector(f'.item[data-id="{queued}"] audio[data-loaded="true"]')
    box = f'.item[data-id="{queued}"]'
    assert page.input_value(f"{box} input[name=transcript]") is not None  # the model's attempt, prefilled
    page.fill(f"{box} input[name=transcript]", "weather in paris")
    page.click(f"{box} button[type=submit]")
    page.wait_for_selector(box, state="detached")
    done = httpx.get(partial.url + "/v1/review", headers=AUTH, timeout=10).json()["items"]
    assert queued not in [i["id"] for i in done]  # no longer pending
    assert errors == []


@pytest.mark.browser
def test_the_review_page_says_when_the_token_is_wrong(partial: Server, page: Page) -> None:  # noqa: F811
    page.goto(partial.url + "/review")
    page.fill("#token", "wrong")
    page.click("#load")
    page.wait_for_selector("#error:not(:empty)")
    assert "401" in (page.text_content("#error") or "")


def test_an_id_beyond_the_stores_integers_is_a_422_not_a_500(partial: Server) -> None:
    """Found by schemathesis: ids past 2**63 - 1 overflowed SQLite's integers into a 500."""
    huge = 2**70
    for response in (
        httpx.get(partial.url + f"/v1/review/{huge}/audio", headers=AUTH, timeout=10),
        httpx.post(partial.url + f"/v1/review/{huge}", headers=AUTH, json={"transcript": "x"}, timeout=10),
    ):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["type"] == "invalid_request"
    missing = httpx.get(partial.url + f"/v1/review/{2**63 - 1}/audio", headers=AUTH, timeout=10)
    assert missing.status_code == 404


def test_a_method_the_path_does_not_take_is_a_405(partial: Server) -> None:
    """Found by schemathesis: `POST /v1/review/stats` reached the review route as item "stats"
    and got a 422; the path exists for GET only, which is a 405 in the error shape."""
    response = httpx.post(partial.url + "/v1/review/stats", headers=AUTH, json={}, timeout=10)
    assert response.status_code == 405, response.text
    assert set(response.json()["error"]) >= {"type", "message"}
    assert httpx.get(partial.url + "/v1/review/stats", headers=AUTH, timeout=10).status_code == 200


def test_a_queue_made_before_model_versions_gains_the_column(tmp_path: Path) -> None:
    import sqlite3

    from serving.lifecycle.review import SCHEMA, ReviewQueue

    old_schema = SCHEMA.replace(",\n    model_version TEXT", "")
    assert "model_version" not in old_schema
    with sqlite3.connect(tmp_path / "review.sqlite3") as db:
        db.executescript(old_schema)
        db.execute(
            "INSERT INTO reviews (request_id, created_at, audio_path, hits) VALUES ('old', 1.0, '/x', '[]')"
        )
    queue = ReviewQueue(tmp_path / "review.sqlite3", tmp_path / "labels")
    assert queue.items()[0].model_version is None
    queue.add("new", None, "/y", "hello", 0.4, [], 2.0, "m@1")
    assert [i.model_version for i in queue.items()] == [None, "m@1"]
