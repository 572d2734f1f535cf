"""Debian's headless Chromium, driven by Selenium through its chromedriver: the one way the suites open a browser."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # git-ignored; CI keeps it with the test output


@contextlib.contextmanager
def chromium(profile_dir: Path, *, window: str = "1280,1400"):
    """A headless Chromium with a profile of its own; quit (with its chromedriver) at the end."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            "browser tests need Debian's chromium and chromium-driver (apt-get install -y chromium "
            "chromium-driver; .ci/run installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={window}",
        f"--user-data-dir={profile_dir / 'chromium'}",
        "--no-first-run",
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER, log_output=str(profile_dir / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()  # stops the chromium it started, then chromedriver
