"""The chat page in a real headless browser: Debian's Chromium driven by Playwright (its own browser download is
not reachable here, so ``executable_path`` points at the system one). Skipped, with the reason shown, where either
is missing; ``.ci/run`` installs both."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import lmlab

CHROMIUM = os.environ.get("LMLAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium): the chat page was not tested in a browser")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_the_chat_page_streams_a_reply_and_renders_text_as_text(browser, base, chat_run, tmp_path):
    with lmlab.serve([base, chat_run], names=["base", "chat"], port=0, background=True) as srv:
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 2")
        assert page.locator("#model option").all_inner_texts() == ["base (base)", "chat"]
        page.select_option("#model", "chat")
        page.fill("#system", "be brief")
        page.fill("#max_tokens", "8")
        # markup typed by the user must stay text: no element is made from it. (This char model cannot read
        # '<', so the reply is the server's error, shown in the conversation.)
        page.fill("#input", "say <b id='injected'>yes</b>")
        page.click("#send")
        page.wait_for_selector(".msg.assistant[data-done='true']", timeout=30_000)
        assert page.locator("#injected").count() == 0
        assert page.locator(".msg.user .text").inner_text() == "say <b id='injected'>yes</b>"
        assert "not in this char vocabulary" in page.locator(".msg.assistant.error .text").inner_text()
        page.click("#new")
        assert page.locator(".msg").count() == 0
        page.fill("#input", "say yes")
        page.click("#send")
        page.wait_for_selector(".msg.assistant[data-done='true']", timeout=30_000)
        reply = page.locator(".msg.assistant .text").inner_text()
        assert page.locator(".msg.error").count() == 0 and "<|" not in reply
        # a second turn in the same conversation, then a new chat empties it
        page.fill("#input", "say no")
        page.keyboard.press("Enter")
        page.wait_for_function("document.querySelectorAll(\".msg.assistant[data-done='true']\").length === 2")
        assert page.locator(".msg").count() == 4
        shot = Path(os.environ.get("LMLAB_SCREENSHOT", tmp_path / "chat.png"))
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 5000
        page.click("#new")
        assert page.locator(".msg").count() == 0
        assert errors == []


def test_the_stop_button_ends_a_stream(browser, base, monkeypatch):
    with lmlab.serve(base, port=0, background=True) as srv:
        sched = srv.served[0].scheduler
        real = sched._decode
        monkeypatch.setattr(sched, "_decode", lambda: (__import__("time").sleep(0.1), real()))
        monkeypatch.setattr(sched, "eos_id", None)  # the reply runs to max tokens, so it is still running at Stop
        page = browser.new_page()
        page.goto(srv.url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 1")
        page.fill("#max_tokens", "25")
        page.fill("#input", "ROMEO:")
        page.click("#send")
        page.wait_for_function("document.querySelector('.msg.assistant .text').textContent.length > 0")
        page.click("#stop")
        page.wait_for_selector(".msg.assistant[data-done='true']", timeout=10_000)
        assert page.locator("#status").inner_text() == "stopped"
        assert not page.locator("#stop").is_enabled() and page.locator("#send").is_enabled()
