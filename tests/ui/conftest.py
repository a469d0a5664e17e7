"""A seeded facefleet API on loopback (uvicorn in a thread) and a headless Debian Chromium to drive it."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine

from facefleet.api.app import create_app
from facefleet.platform.settings import get_settings
from facefleet.platform.store import ObjectStore
from tests.fixtures.servers import free_port
from tests.ui.seed import Seeded, seed_console

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@dataclass
class Console:
    url: str
    seeded: Seeded
    engine: Engine
    store: ObjectStore


@pytest.fixture
def console(sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path) -> Iterator[Console]:
    settings = get_settings()
    seeded = seed_console(sqlite_engine, local_store, settings, tmp_path / "seed")
    app = create_app(settings, engine=sqlite_engine, store=local_store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield Console(url, seeded, sqlite_engine, local_store)
    server.should_exit = True
    thread.join(timeout=10)


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path) and shutil.which(Path(path).name) is None:
            return f"{path} is missing (apt-get install chromium chromium-driver; .ci/run does it)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Debian's Chromium, headless, with a fresh profile; never a downloaded browser."""
    missing = _browser_missing()
    if missing:
        if os.environ.get("FACEFLEET_REQUIRE_SERVERS") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver") or CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
