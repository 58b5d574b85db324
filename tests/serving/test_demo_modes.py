"""The demo page under each degree of automation, in headless Debian chromium: assist shows the
transcript as a suggestion to confirm or edit (an edit is a correction, a strong label); partial
shows that a request was sent for review; full shows hits with their scores at once."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from serving.local_server import Server, running_server
from tests.serving.events import rows
from tests.serving.test_dashboard import browser  # noqa: F401 (fixture)

pytestmark = [pytest.mark.server, pytest.mark.browser]


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:  # noqa: F811 (the fixture above)
    page = browser.new_page()
    yield page
    page.close()


def upload(page: Page, server: Server, speech_wav: Path) -> None:
    page.goto(server.url + "/")
    page.set_input_files("#file", str(speech_wav))


def test_assist_asks_to_confirm_and_an_edit_is_a_correction(
    page: Page, speech_wav: Path, tmp_path: Path
) -> None:
    with running_server(tmp_path, automation="assist") as server:
        upload(page, server, speech_wav)
        page.wait_for_selector("#status[data-state=confirm]", timeout=60_000)
        assert page.is_visible("#suggestion") and page.locator("#results li").count() == 0
        assert not page.is_visible("#correct-form") and not page.is_visible("#review-state")
        voice_id = page.get_attribute("#transcript", "data-request-id")
        suggested = page.text_content("#suggested") or ""
        assert suggested.strip("“”") == page.text_content("#transcript")

        page.click("#edit")
        assert page.input_value("#corrected") == page.text_content("#transcript")
        page.fill("#corrected", "weather in paris")
        page.click("#correct-form button")
        page.wait_for_selector("#feedback[data-state=corrected]", timeout=30_000)
        assert "Paris" in (page.locator("#results button").first.text_content() or "")
        corrections = rows(server, "SELECT corrected_text FROM events WHERE kind = 'feedback' "
                                   "AND target_request_id = ?", voice_id)  # fmt: skip
        assert corrections == [("weather in paris",)]

        upload(page, server, speech_wav)  # confirming instead shows the hits
        page.wait_for_selector("#status[data-state=confirm]", timeout=60_000)
        page.click("#confirm")
        page.wait_for_selector("#status[data-state=done]")
        assert not page.is_visible("#suggestion") and not page.is_visible("#correct-form")
        assert page.locator("#results li").count() >= 1  # hits, or "Nothing found."


def test_partial_shows_sent_for_review(page: Page, speech_wav: Path, tmp_path: Path) -> None:
    settings = {"automation": "partial", "review_confidence_threshold": "1.01", "retain_audio": "true"}
    with running_server(tmp_path, **settings) as server:
        upload(page, server, speech_wav)
        page.wait_for_selector("#status[data-state=review]", timeout=60_000)
        assert page.is_visible("#review-state")
        review_id = (page.text_content("#review-id") or "").lstrip("#")
        assert rows(server, "SELECT status_code FROM events WHERE kind = 'voice_search'") == [(202,)]
        assert review_id.isdigit() and page.locator("#results li").count() == 0
        assert page.text_content("#transcript") == ""


def test_full_shows_hits_with_scores(page: Page, tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        page.goto(server.url + "/")
        page.fill("#text", "weather in pariss")
        page.click("#text-form button")
        page.wait_for_selector("#status[data-state=done]", timeout=30_000)
        first = page.locator("#results button").first
        score = float(first.locator("meter").get_attribute("value") or 0)
        assert 0 < score <= 1 and f"{score:.2f}" in (first.text_content() or "")
