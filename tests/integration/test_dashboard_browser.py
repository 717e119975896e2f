"""The /dashboard page in real headless Chromium (Debian's), driven over the
DevTools protocol: it loads, lists the partitions, and its numbers change
while events flow. A screenshot is saved to test-artifacts/dashboard.png."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from patronage.models.simulate import generate
from patronage.models.timeunits import DAY_MS
from tests.conftest import IN_CI
from tests.integration.harness import (
    ARTIFACTS,
    Worker,
    settings_with_topics,
    wait_for,
)
from tests.integration.test_end_to_end import as_messages, publish_with_metadata


class DevTools:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=30)
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


def chromium_binary() -> str:
    found = shutil.which("chromium")
    if found is None:
        message = "Debian's chromium is not installed; run `make chromium`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_dashboard_in_headless_chromium(isolated_env: dict[str, str], tmp_path: Path) -> None:
    binary = chromium_binary()
    env = {**isolated_env, "PATRONAGE_LAG_INTERVAL_S": "1", "PATRONAGE_COMMIT_INTERVAL_S": "0.3"}
    settings = settings_with_topics(env)
    now = int(time.time() * 1000)
    events, _ = generate(customers=120, days=60, seed=6, start_ms=(now // DAY_MS - 61) * DAY_MS)
    messages = as_messages(events)
    half = len(messages) // 2
    publish_with_metadata(settings, messages[:half])

    worker = Worker(env).start()
    profile = tmp_path / "profile"
    browser_log = tmp_path / "chromium.log"
    # Port 0: Chromium binds a free port itself and writes it to
    # DevToolsActivePort. A port picked here and released can be taken by
    # another process before Chromium binds it; Chromium then runs on without
    # DevTools and the test waits for nothing.
    with browser_log.open("wb") as log:
        browser = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:

        def browser_running() -> None:
            if browser.poll() is not None:
                tail = browser_log.read_text(errors="replace")[-2000:]
                raise AssertionError(f"chromium exited with {browser.returncode}:\n{tail}")

        def page_ws() -> str | None:
            try:
                port = int((profile / "DevToolsActivePort").read_text().split()[0])
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
            except (OSError, ValueError, IndexError):
                return None
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        wait_for(lambda: page_ws() is not None, 60, "chromium's DevTools endpoint", browser_running)
        url = f"http://127.0.0.1:{worker.port}/dashboard"

        async def drive() -> tuple[int, str, str, list[str]]:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(page_ws() or "", max_msg_size=0) as ws,
            ):
                tools = DevTools(ws)
                await tools.call("Page.enable")
                await tools.call("Page.navigate", url=url)
                for _ in range(60):  # the page polls every 2 s
                    rows = await tools.evaluate(
                        "document.querySelectorAll('#partitions tbody tr').length"
                    )
                    if rows:
                        break
                    await asyncio.sleep(0.5)
                before = await tools.evaluate("document.getElementById('applied').textContent")
                await asyncio.to_thread(publish_with_metadata, settings, messages[half:])
                after = before
                for _ in range(60):
                    after = await tools.evaluate("document.getElementById('applied').textContent")
                    if after != before:
                        break
                    await asyncio.sleep(0.5)
                await asyncio.sleep(2.5)  # one more refresh: throughput shown
                labels = await tools.evaluate(
                    "[...document.querySelectorAll('#partitions tbody tr')]"
                    ".map(r => r.dataset.partition)"
                )
                shot = await tools.call("Page.captureScreenshot", format="png")
                ARTIFACTS.mkdir(exist_ok=True)
                (ARTIFACTS / "dashboard.png").write_bytes(base64.b64decode(shot["data"]))
                return rows, before, after, labels

        rows, before, after, labels = asyncio.run(drive())
    finally:
        browser.terminate()
        browser.wait(10)
        worker.stop()

    partitions = settings.partitions * len(settings.input_topics)
    assert rows == partitions
    assert f"{settings.topic('clicks')}/0" in labels
    assert before != after, "the applied count did not change while events flowed"
    assert int(after.replace(",", "")) > int(before.replace(",", "") or 0)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
