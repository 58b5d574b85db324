"""The monitoring dashboard in headless Debian chromium, fed by minutes of traffic sent in seconds.

The server trusts `X-Event-Time`, so requests stamped over the last minutes of event time build
real windows for the alarm engine and the dashboard's series without waiting for them.
"""

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from serving.local_server import Server, running_server
from tests.signals import encode, espeak, pad

pytestmark = [pytest.mark.server, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")

# Rules of this test's own, so the states it asserts do not move when the shipped thresholds are
# tuned: one that fires on the bad requests, one that stays ok, one that never has enough samples.
RULES = """
rules:
  - name: client_errors
    metric: client_error_ratio
    window: 5m
    comparator: ">"
    threshold: 0.05
    severity: warning
    min_samples: 10
  - name: latency_p95_high
    metric: latency_p95_seconds
    window: 5m
    comparator: ">"
    threshold: 5
    severity: critical
    min_samples: 10
  - name: volume_drift
    drift: rms_dbfs
    test: psi
    window: 2m
    comparator: ">"
    threshold: 1.0
    severity: warning
    min_samples: 1000
"""

QUERIES = ("weather in paris", "hotels in berlin", "flights to tokyo", "museums in rome", "trains to madrid")
REQUESTS = 58
"""40 voice searches, 10 typed ones and 8 bad requests (a client error ratio near 0.14)."""
TRAFFIC_S = 8 * 60.0
"""Event time the traffic is spread over, ending now."""


def kind_of(i: int) -> str:
    """Bad requests and typed searches spread evenly through the voice searches."""
    return "bad" if i % 7 == 6 else "typed" if i % 5 == 4 else "voice"


@pytest.fixture(scope="module")
def query_wavs() -> list[bytes]:
    wavs = []
    for text in QUERIES:
        samples, rate = espeak(text)
        wavs.append(encode(pad(samples, 0.3, 0.3, rate), rate))
    return wavs


def send(client: httpx.Client, i: int, stamp: float, wavs: list[bytes]) -> httpx.Response:
    headers = {"X-Event-Time": f"{stamp:.3f}"}
    session = f"dashboard-{i // 3}"
    kind = kind_of(i)
    if kind == "voice":
        headers["content-type"] = "audio/wav"
        return client.post(
            "/v1/search", params={"session_id": session}, content=wavs[i % len(wavs)], headers=headers
        )
    if kind == "typed":
        body = {"session_id": session, "query": QUERIES[i % len(QUERIES)]}
        return client.post("/v1/search/text", json=body, headers=headers)
    # Four kinds of client error: not audio, an empty body, no session, an empty typed query.
    bad = (i // 7) % 4
    if bad == 3:
        return client.post("/v1/search/text", json={"session_id": session, "query": ""}, headers=headers)
    headers["content-type"] = "audio/wav"
    params = {} if bad == 2 else {"session_id": session}
    content = b"definitely not audio" if bad == 0 else b"" if bad == 1 else wavs[0]
    return client.post("/v1/search", params=params, content=content, headers=headers)


def wait_evaluated(client: httpx.Client, at: float) -> None:
    """Until the alarm engine (checking each second) has judged the windows ending at `at`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        evaluated = client.get("/v1/alerts").json()["evaluated_at"]
        if evaluated is not None and evaluated >= at - 1e-3:
            return
        time.sleep(0.2)
    raise AssertionError(f"the alarms were not evaluated at {at} within 30 s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, query_wavs: list[bytes]) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("dashboard")
    rules = state / "alarms.yml"
    rules.write_text(RULES)
    with (
        running_server(state, trust_client_time="true", alarm_step_s="1", alarm_rules=str(rules)) as running,
        httpx.Client(base_url=running.url, timeout=60) as client,
    ):
        end = time.time()
        stamps = [end - TRAFFIC_S + (i + 1) * TRAFFIC_S / REQUESTS for i in range(REQUESTS)]
        statuses = [send(client, i, stamp, query_wavs).status_code for i, stamp in enumerate(stamps)]
        assert sum(s >= 400 for s in statuses) == sum(kind_of(i) == "bad" for i in range(REQUESTS))
        wait_evaluated(client, stamps[-1])
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"Debian chromium is expected at {CHROMIUM} (make install puts it there)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    yield page
    page.close()


def test_dashboard_draws_every_chart_and_fills_the_tables(server: Server, page: Page) -> None:
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(server.url) else problems.append(r.url))
    page.goto(server.url + "/dashboard?span=15m")
    chart = 'canvas[data-chart="client_errors"][data-drawn="true"][data-span="15m"]'
    page.wait_for_selector(chart, timeout=30_000)
    page.wait_for_selector("#status[data-state=ok]")

    # One chart per rule and per dashboard metric; every metric has data in these 15 minutes.
    assert page.locator("#rule-charts canvas").count() == 3
    assert page.locator("#metric-charts canvas").count() >= 10
    assert page.locator('#metric-charts canvas[data-drawn="true"]').count() >= 5
    for name in ("requests_per_second", "client_error_ratio", "latency_p95_seconds"):
        assert page.get_attribute(f'canvas[data-chart="{name}"]', "data-drawn") == "true", name
    # A rule that never has enough samples is a gap, not a zero line.
    assert page.get_attribute('canvas[data-chart="volume_drift"]', "data-drawn") == "false"

    states = {
        row.get_attribute("data-rule"): row.get_attribute("data-state")
        for row in page.locator("#alarms tbody tr").all()
    }
    assert states == {
        "client_errors": "firing",
        "latency_p95_high": "ok",
        "volume_drift": "insufficient_data",
    }
    background = "el => getComputedStyle(el).backgroundColor"
    firing = page.locator('#alarms tr[data-rule="client_errors"]').evaluate(background)
    calm = page.locator('#alarms tr[data-rule="latency_p95_high"]').evaluate(background)
    assert firing != calm, "the firing row is not highlighted"
    assert page.locator('#transitions tbody tr.firing[data-rule="client_errors"]').count() >= 1
    assert page.locator('.card.firing[data-rule="client_errors"]').count() == 1

    drift_features = page.locator("#drift tbody tr[data-feature]")
    assert drift_features.count() >= 5
    assert page.locator('#drift tr[data-feature="rms_dbfs"]').count() == 1
    # The table tells the alarms' story: a few dozen clips are too few to call drift (volume_drift
    # needs 1000, and the features no rule watches take the same floor), against a profile that exists.
    assert page.locator("#drift tbody tr.drifted").count() == 0
    for row in drift_features.all():
        assert "of 1000)" in (row.text_content() or ""), row.text_content()
    caption = page.locator("#drift-caption").text_content() or ""
    assert "data/monitoring/reference.json" in caption and "1000 values" in caption
    # No canary ever ran here: the rollout tables say so instead of standing as bare headers.
    assert (page.locator("#gates tbody td.empty").text_content() or "").startswith("no canary yet")
    assert (page.locator("#rollout-history tbody td.empty").text_content() or "").startswith(
        "no rollout change"
    )
    assert problems == [], "console errors or requests leaving the server"


def test_chart_pixels_show_the_series_and_the_dashed_threshold(server: Server, page: Page) -> None:
    page.goto(server.url + "/dashboard?span=15m")
    canvas = page.locator('canvas[data-chart="client_errors"][data-drawn="true"]')
    canvas.wait_for(timeout=30_000)
    # Traffic covers the last 8 of 15 minutes and the rule needs 10 samples: a line with a gap.
    assert 10 < int(canvas.get_attribute("data-points") or 0) < 60

    rgb = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
    height, width, _ = rgb.shape
    assert width > 200 and height > 100
    ink = (rgb < 245).any(axis=2)
    assert ink.mean() > 0.02, "hardly anything was drawn"
    red = red_pixels(rgb)
    blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 100) & (rgb[..., 1] < 150)
    assert blue.sum() > 100, "no series line"
    # The threshold: red pixels along one row across most of the width, broken into dashes.
    columns = np.flatnonzero(red[red.sum(axis=1).argmax()])
    assert columns.size and columns[-1] - columns[0] > 0.7 * width, "no threshold line"
    assert columns.size / (columns[-1] - columns[0] + 1) < 0.85, "the threshold line is not dashed"


def red_pixels(rgb: npt.NDArray[np.int_]) -> npt.NDArray[np.bool_]:
    return (rgb[..., 0] > 170) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110)


def test_span_selector_redraws_over_the_chosen_span(server: Server, page: Page) -> None:
    page.goto(server.url + "/dashboard?span=15m")
    page.wait_for_selector('canvas[data-chart="client_errors"][data-drawn="true"][data-span="15m"]')
    page.select_option("#span", "1d")
    page.wait_for_selector('canvas[data-chart="client_errors"][data-drawn="true"][data-span="1d"]')
    assert page.url.endswith("?span=1d")
    # 8 minutes of traffic in a day of 24-minute steps: the rule's 5-minute windows see it once.
    points = int(page.get_attribute('canvas[data-chart="client_errors"]', "data-points") or 0)
    assert 1 <= points <= 2


def test_the_page_refreshes_every_ten_seconds(server: Server, page: Page) -> None:
    page.clock.install()  # the page's timers run on a clock the test can stop and move
    page.goto(server.url + "/dashboard")
    page.wait_for_selector("#status[data-state=ok]")
    # A second ahead: under load the next call can come more than 100 ms later, and a clock
    # cannot be paused in its past.
    page.clock.pause_at(page.evaluate("Date.now()") / 1000 + 1.0)
    assert page.get_attribute("body", "data-refreshes") == "1"
    # Exactly one refresh in each of two 10-second stretches: not more often, not less.
    for expected in ("2", "3"):
        page.clock.run_for(10_000)
        page.wait_for_selector("#status[data-state=ok]")
        assert page.get_attribute("body", "data-refreshes") == expected


@pytest.fixture(scope="module")
def server_without_monitoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("no-monitoring"), monitoring="false") as running:
        yield running


def test_the_page_says_so_when_monitoring_is_off(server_without_monitoring: Server, page: Page) -> None:
    page.goto(server_without_monitoring.url + "/dashboard")
    page.wait_for_selector("#status[data-state=error]", timeout=30_000)
    message = page.text_content("#error") or ""
    assert "404" in message and "monitoring is switched off" in message
    assert page.locator('canvas[data-drawn="true"]').count() == 0
