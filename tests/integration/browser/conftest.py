"""A real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium) that can reach loopback only,
and the session's keyed server on loopback (API keys on, two tiny torch variants: no ONNX export, quick to start)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.integration.conftest import SECURED_VARIANTS
from tests.support.helpers import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
VARIANTS = SECURED_VARIANTS
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
WIDTH = 1280
SCREENSHOT_DIR = Path(__file__).resolve().parents[3] / "reports" / "browser"


def browser_binaries() -> tuple[Path, Path]:
    """Skip where there is no Chromium, unless on CI (CI=true), where its absence is a failure."""
    chromium = CHROMIUM if CHROMIUM.exists() else Path(shutil.which("chromium") or CHROMIUM)
    driver = CHROMEDRIVER if CHROMEDRIVER.exists() else Path(shutil.which("chromedriver") or CHROMEDRIVER)
    missing = [str(path) for path in (chromium, driver) if not path.exists()]
    if missing:
        message = f"{', '.join(missing)} not found: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


class Browser:
    """A Chrome WebDriver session plus every URL the browser requested (from its performance log)."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver
        self.requested: dict[str, str] = {}  # request id -> URL
        self.blocked_ids: set[str] = set()  # refused by the page's Content-Security-Policy: never left the browser
        self.console: list[dict[str, Any]] = []

    def collect_logs(self) -> None:
        for entry in self.log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message["method"] == "Network.requestWillBeSent":
                self.requested[params["requestId"]] = params["request"]["url"]
            elif message["method"] == "Network.webSocketCreated":
                self.requested[params["requestId"]] = params["url"]
            elif message["method"] == "Network.loadingFailed" and params.get("blockedReason") == "csp":
                self.blocked_ids.add(params["requestId"])
        self.console.extend(self.log("browser"))

    def log(self, kind: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.driver.get_log(kind)  # type: ignore[no-untyped-call]
        return entries

    def forget_logs(self) -> None:
        self.collect_logs()
        self.requested.clear()
        self.blocked_ids.clear()
        self.console.clear()

    def urls(self) -> list[str]:
        self.collect_logs()
        return list(self.requested.values())

    def blocked_by_policy(self) -> list[str]:
        self.collect_logs()
        return [url for request_id, url in self.requested.items() if request_id in self.blocked_ids]

    def foreign_requests(self) -> list[str]:
        """URLs sent towards a host that is not loopback (data:, blob: and chrome: URLs never leave the browser)."""
        self.collect_logs()
        foreign = []
        for request_id, url in self.requested.items():
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob", "about", "chrome", "devtools") or request_id in self.blocked_ids:
                continue
            if parts.hostname not in LOOPBACK:
                foreign.append(url)
        return foreign

    def severe_console(self) -> list[str]:
        """Console errors, less the reports of requests the page's policy refused (listed by blocked_by_policy)."""
        blocked = self.blocked_by_policy()
        refused = [
            entry
            for entry in self.console
            if entry["source"] == "security" and any(url in entry["message"] for url in blocked)
        ]
        return [entry["message"] for entry in self.console if entry["level"] == "SEVERE" and entry not in refused]

    def screenshot(self, path: Path) -> Path:
        """The whole page, from the top: the viewport is stretched to the document's height for the shot."""
        self.driver.execute_script("window.scrollTo(0, 0)")
        height = int(self.driver.execute_script("return document.documentElement.scrollHeight"))
        metrics = {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            assert self.driver.save_screenshot(str(path)), f"could not save {path}"
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium, chromedriver = browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--window-size={WIDTH},900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        # Nothing but loopback: no name resolves, and every connection that is not to loopback goes to a proxy
        # on a closed loopback port (Chromium never proxies loopback itself).
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(
        executable_path=str(chromedriver), log_output=str(tmp_path_factory.mktemp("chromedriver") / "log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield Browser(driver)
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def keyed_server(secured_server: ServerProcess) -> ServerProcess:
    """The session's keyed server (tests/integration/conftest.py): API keys on (docs stay public, the default), two
    tiny torch demo variants."""
    return secured_server
