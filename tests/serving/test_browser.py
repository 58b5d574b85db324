"""The demo page in headless Debian chromium: microphone, upload, typed search and a click."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Route, sync_playwright

from serving.local_server import Server, running_server
from tests.serving.events import event, rows

pytestmark = [pytest.mark.server, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Audio kept, so that the stream's audio can be uploaded again and the answers compared."""
    with running_server(tmp_path_factory.mktemp("browser"), retain_audio="true") as running:
        yield running


@pytest.fixture
def page(server: Server, speech_wav: Path) -> Iterator[Page]:
    if not CHROMIUM.is_file():
        pytest.fail(f"Debian chromium is expected at {CHROMIUM} (make install puts it there)")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                # A fake microphone that plays our speech file, and no permission prompt.
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={speech_wav}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        page = browser.new_page()
        page.goto(server.url + "/")
        yield page
        browser.close()


def wait_done(page: Page) -> str:
    page.wait_for_selector("#status[data-state=done], #status[data-state=error]", timeout=60_000)
    assert page.get_attribute("#status", "data-state") == "done", page.text_content("#error")
    request_id = page.get_attribute("#transcript", "data-request-id")
    assert request_id
    return request_id


def test_the_microphone_streams_partials_then_the_final_of_the_upload(page: Page, server: Server) -> None:
    """The demo page streams the fake microphone over WS /v1/search/stream: partial words show
    while it plays, then the final, which is what POST /v1/search answers for the same audio."""
    # The record mark is drawn by CSS (a glyph showed as a missing-character box).
    assert page.text_content("#record") == "Record"
    assert page.locator("#record .dot").bounding_box()["width"] > 5  # type: ignore[index]
    page.click("#record")
    page.wait_for_selector("#status[data-state=recording]")
    page.wait_for_selector("#transcript[data-state=partial]", timeout=30_000)
    partial_words = page.text_content("#transcript")
    page.wait_for_timeout(1000)
    # The level meter moved with the fake microphone's speech.
    assert float(page.get_attribute("#level", "data-peak") or 0) > 0.05
    # Stop, unless the server heard the end of speech first. Checked and clicked in one step in the
    # page: the button could be disabled between a separate check and click (it failed CI once), and
    # click() on a disabled button does nothing.
    page.evaluate("document.querySelector('#stop').click()")
    row = event(server, wait_done(page))
    assert int(page.get_attribute("#transcript", "data-partials") or 0) >= 1 and partial_words
    assert row["route"] == "/v1/search/stream" and row["kind"] == "voice_search" and row["status_code"] == 200
    assert row["content_type"] == "audio/wav" and row["sample_rate_hz"] == 16_000
    assert 1.0 < float(row["duration_s"]) < 6.0
    assert page.text_content("#transcript") == (row["transcript"] or "(no speech heard)")
    assert page.get_attribute("#level", "value") == "0"  # the meter stops with the recording
    uploaded = httpx.post(
        server.url + "/v1/search", files={"file": ("stream.wav", Path(row["audio_path"]).read_bytes())},
        data={"session_id": "same-audio"}, timeout=60,
    ).json()  # fmt: skip
    assert uploaded["transcript"] == row["transcript"]


def test_uploading_a_file_searches_by_voice(page: Page, server: Server, speech_wav: Path) -> None:
    page.set_input_files("#file", str(speech_wav))
    row = event(server, wait_done(page))
    assert row["kind"] == "voice_search" and row["audio_bytes"] == speech_wav.stat().st_size


def test_typed_search_then_clicking_a_result_records_the_click(page: Page, server: Server) -> None:
    page.fill("#text", "weather in pariss")
    page.click("#text-form button")
    search_id = wait_done(page)
    timing = page.text_content("#timing") or ""
    assert " ms · model " in timing and not timing.startswith("·")  # typed: no confidence before it
    first = page.locator("#results button").first
    assert "Paris" in (first.text_content() or "")
    clicked_id = first.get_attribute("data-id")
    first.click()
    page.wait_for_selector("#feedback[data-state=sent]")
    clicks = rows(
        server,
        "SELECT clicked_id, status_code FROM events WHERE kind = 'feedback' AND target_request_id = ?",
        search_id,
    )
    assert clicks == [(clicked_id, 200)]
    assert event(server, search_id)["kind"] == "text_search"


def test_a_bad_upload_shows_the_error(page: Page, tmp_path: Path) -> None:
    page.fill("#text", "weather in paris")  # an answer first: the error must replace it, not sit under it
    page.click("#text-form button")
    wait_done(page)
    assert page.locator("#results button").count() >= 1
    bad = tmp_path / "notes.wav"
    bad.write_text("definitely not audio")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#status[data-state=error]")
    assert "undecodable_audio" in (page.text_content("#error") or "")
    assert page.locator("#results li").count() == 0 and not page.text_content("#transcript")
    assert not page.text_content("#timing")


def test_the_api_docs_render_offline(server: Server) -> None:
    """/docs with every request off this machine refused: swagger-ui comes from the package."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page()
        outside: list[str] = []

        def local_only(route: Route) -> None:
            if route.request.url.startswith(server.url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", local_only)
        page.goto(server.url + "/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
        paths = page.locator(".opblock-summary-path").all_text_contents()
        browser.close()
    assert any("/v1/search" in path for path in paths), paths
    assert outside == []
