"""The dashboard's rollout panel in headless Debian chromium: per-slot figures of a canary with
two real models, the gates, and the audited history."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page

from serving.local_server import Server, running_server
from tests.serving.lifecycle.test_rollout import search
from tests.serving.test_dashboard import browser, page  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.server, pytest.mark.browser]
TOKEN = "dash"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("dashboard-rollout")
    with running_server(state, challenger_dir=str(tiny_model_dir), admin_token=TOKEN) as running:
        body = {"mode": "canary", "canary_share": 0.5, "reason": "half of the sessions"}
        headers = {"Authorization": f"Bearer {TOKEN}", "X-Actor": "bob"}
        assert (
            httpx.post(running.url + "/v1/admin/rollout", json=body, headers=headers, timeout=30).status_code
            == 200
        )
        for i in range(8):
            search(running, f"dash-{i}")
        yield running


def test_rollout_panel_shows_both_slots_the_gates_and_the_history(server: Server, page: Page) -> None:  # noqa: F811
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/dashboard")
    page.wait_for_selector("#slots tbody tr:nth-child(2)")
    caption = page.text_content("#rollout-caption") or ""
    assert "mode canary" in caption and "50.0% of sessions" in caption and "tiny@" in caption
    rows = [
        [c.text_content() for c in r.query_selector_all("td")]
        for r in page.query_selector_all("#slots tbody tr")
    ]
    by_slot = {r[0]: r for r in rows}
    assert set(by_slot) == {"primary", "challenger"}
    assert str(by_slot["challenger"][1]).startswith("tiny@")
    assert sum(int(str(r[2])) for r in rows) == 8  # every voice search, on one slot or the other
    history = page.query_selector_all("#rollout-history tbody tr")
    assert [c.text_content() for c in history[0].query_selector_all("td")][1:] == [
        "bob",
        "rollout",
        "half of the sessions",
    ]
    # No automatic ramp: no gate judged, and the table says so in one row.
    assert len(page.query_selector_all("#gates tbody tr td:not(.empty)")) == 0
    assert (page.text_content("#gates tbody td.empty") or "").startswith("no canary yet")
    assert errors == []
