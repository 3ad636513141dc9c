"""The dashboard in a real browser: Debian's headless chromium, driven by playwright's sync
API in a worker thread, against a real daemon served by this Trio run.

The browser thread waits on page content (playwright's ``expect`` polls the DOM with a
timeout); it calls back into Trio with ``trio.from_thread`` to publish events or stop the
daemon, so the order of events is fixed and no step sleeps.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
from playwright.sync_api import Page, expect, sync_playwright

from api._daemon import Daemon

from ..plugins._fixtures import code_for, write_plugin
from ..plugins.test_host import wait_until
from ._daemon import client, running_daemon, token

CHROMIUM = Path("/usr/bin/chromium")
# Nothing here may reach past 127.0.0.1: no updates, no sync, no first-run pings.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 20_000  # each wait on the page; the whole test is bounded by trio.fail_after(60)


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"the dashboard test needs Debian's chromium at {CHROMIUM}:"
            " run `apt-get install chromium` (do not use `playwright install`)"
        )
    return CHROMIUM


@contextlib.contextmanager
def open_page(browser_path: Path, url: str, *, fake_clock: bool = False) -> Iterator[Page]:
    """A fresh headless chromium showing ``url``; closed when the block ends. With
    ``fake_clock``, the page's time moves only when the test moves it (``page.clock``)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(browser_path), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(WAIT_MS)
            if fake_clock:
                page.clock.install()
            page.goto(url)
            yield page
        finally:
            browser.close()


def browse_and_publish(
    browser_path: Path, url: str, publish: Callable[[], Awaitable[None]], reader: str
) -> tuple[list[str], list[str]]:
    """Check the page against a daemon with the echo plugin whose reads need a token:
    the page asks for one, and shows nothing until ``reader`` is entered. Then publish
    through ``publish`` once the event stream is open, and check the feed and the dead
    letters. Returns the URLs the page requested and the errors it reported."""
    requested: list[str] = []
    errors: list[str] = []
    with open_page(browser_path, url) as page:
        page.on("request", lambda request: requested.append(request.url))
        page.on("pageerror", lambda error: errors.append(str(error)))
        expect(page).to_have_title(re.compile("cws daemon"))
        expect(page.locator("#problem")).to_contain_text("the daemon needs a token")
        expect(page.locator("#connection")).to_have_attribute("data-state", "disconnected")
        expect(page.locator("#stream")).not_to_have_attribute("data-state", "open")
        # The refused requests above are console errors of the browser's own: from here
        # on there must be none.
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.locator("#token").fill(reader)
        page.get_by_role("button", name="Use token").click()
        assert page.evaluate("sessionStorage.getItem('cws-token')") == reader
        expect(page.get_by_role("heading", name="Actors")).to_be_visible()
        for path in ("/", "/plugins", "/plugins/echo"):
            badge = page.locator(f'#actors tr[data-path="{path}"] .state .badge')
            expect(badge).to_have_text("running", timeout=WAIT_MS)
            expect(badge).to_have_class(re.compile(r"\bok\b"))  # running is green
        echo = page.locator('#actors tr[data-path="/plugins/echo"]')
        expect(echo).to_contain_text("liveness ✓")
        expect(echo).to_contain_text("0 / 1000")  # mailbox depth / capacity
        plugin = page.locator('#plugins tr[data-plugin="echo"]')
        expect(plugin.locator(".state")).to_have_text("running", timeout=WAIT_MS)
        expect(plugin).to_contain_text("1.0.0")
        expect(plugin).to_contain_text("events: instance.*")
        expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
        expect(page.locator("#refreshed")).not_to_have_text("never")
        expect(page.locator("#letters")).to_contain_text("none")
        # The stream's subscription exists before its headers are sent, so once the
        # EventSource is open nothing published afterwards can be missed.
        expect(page.locator("#stream")).to_have_attribute("data-state", "open", timeout=WAIT_MS)

        trio.from_thread.run(publish)

        feed = page.locator("#feed")
        expect(feed).to_have_attribute("aria-live", "polite")
        started = feed.locator('li[data-topic="instance.started"]')
        expect(started).to_contain_text('{"id":"i-1"}', timeout=WAIT_MS)
        expect(started).to_contain_text("from http")
        letter = page.locator("#letters tr", has_text="/plugins/gone")
        expect(letter).to_contain_text("no_such_actor", timeout=WAIT_MS)
        expect(letter).to_contain_text("ghost.seen")
    return requested, errors


async def test_the_dashboard_shows_actors_plugins_dead_letters_and_live_events(
    tmp_path: Path, chromium: Path
) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo")
    with trio.fail_after(60):
        async with running_daemon(home, open_reads=False) as daemon:
            publisher = await token(daemon, "events:publish")
            reader = await token(daemon, "events:read")
            async with client(daemon, publisher) as http:

                async def publish() -> None:
                    answer = await http.post(
                        "/api/v1/events",
                        json={"topic": "instance.started", "payload": {"id": "i-1"}},
                    )
                    assert answer.status_code == 202, answer.text
                    # A subscriber with no actor behind it turns its event into a dead letter.
                    daemon.runtime.bus.subscribe_actor("/plugins/gone", ("ghost.*",))
                    answer = await http.post("/api/v1/events", json={"topic": "ghost.seen"})
                    assert answer.status_code == 202, answer.text

                assert daemon.url is not None
                requested, errors = await trio.to_thread.run_sync(
                    browse_and_publish, chromium, daemon.url + "/", publish, reader
                )
    assert errors == []
    # Self-contained: every request the page made went to the daemon (no CDN, no fonts).
    assert requested
    assert [url for url in requested if not url.startswith(daemon.url + "/")] == []


def browse_until_disconnected(browser_path: Path, url: str, stop: Callable[[], None]) -> None:
    with open_page(browser_path, url) as page:
        expect(page.locator("#connection")).to_have_attribute(
            "data-state", "connected", timeout=WAIT_MS
        )
        expect(page.locator("#stream")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
        stop()
        expect(page.locator("#connection")).to_have_attribute(
            "data-state", "disconnected", timeout=WAIT_MS
        )
        expect(page.locator("#connection")).to_have_class(re.compile(r"\bbad\b"))
        expect(page.locator("#problem")).to_contain_text("retrying")
        expect(page.locator("#stream")).not_to_have_attribute("data-state", "open")
        # What was last seen stays on screen while the page keeps retrying.
        expect(page.locator('#actors tr[data-path="/plugins"]')).to_be_visible()


async def test_the_dashboard_says_disconnected_when_the_daemon_goes_away(
    tmp_path: Path, chromium: Path
) -> None:
    stopped = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        # open_events: the page follows the stream without a token, from loopback.
        async with running_daemon(tmp_path / "home", open_events=True) as daemon:
            task_status.started(daemon)
            await stopped.wait()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(serve)
            assert daemon.url is not None

            def stop() -> None:
                trio.from_thread.run_sync(stopped.set)

            await trio.to_thread.run_sync(
                browse_until_disconnected, chromium, daemon.url + "/", stop
            )


def browse_restarted(browser_path: Path, url: str) -> list[str]:
    errors: list[str] = []
    with open_page(browser_path, url, fake_clock=True) as page:
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.clock.run_for(2000)  # the first poll
        flaky = page.locator('#plugins tr[data-plugin="echo"] .restarted')
        expect(flaky).to_have_text("restarted just now", timeout=WAIT_MS)
        expect(flaky).to_have_class(re.compile(r"\bwarn\b"))
        actor = page.locator('#actors tr[data-path="/plugins/echo"] .restarted')
        expect(actor).to_have_text("restarted just now")
        # A plugin that never restarted carries no flag.
        steady = page.locator('#plugins tr[data-plugin="steady"]')
        expect(steady.locator(".state")).to_have_text("running", timeout=WAIT_MS)
        expect(steady.locator(".restarted")).to_have_count(0)
        # The page's clock moves on (the daemon's does not): the flag ages, then goes.
        page.clock.fast_forward(12 * 60_000)
        page.clock.run_for(2000)
        expect(flaky).to_have_text(re.compile(r"^restarted 1[23] min ago$"), timeout=WAIT_MS)
        page.clock.fast_forward(50 * 60_000)
        page.clock.run_for(2000)
        expect(flaky).to_have_count(0, timeout=WAIT_MS)
        expect(page.locator('#plugins tr[data-plugin="echo"] .state')).to_have_text("running")
    return errors


async def test_the_dashboard_flags_a_plugin_that_restarted_in_the_last_hour(
    tmp_path: Path, chromium: Path
) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo")
    write_plugin(home / "plugins", "steady", code=code_for("steady"))
    with trio.fail_after(60):
        async with running_daemon(home) as daemon:
            assert (await daemon.host.execute_cli(["echo", "crash"])).exit_code == 1

            async def restarted() -> bool:
                status = await daemon.host.status("echo")
                return status.ready and status.restarts == 1

            await wait_until(restarted)
            assert daemon.url is not None
            errors = await trio.to_thread.run_sync(browse_restarted, chromium, daemon.url + "/")
    assert errors == []
