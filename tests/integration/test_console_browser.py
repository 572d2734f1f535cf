"""The web console in a real browser: Debian's headless Chromium driven by Selenium, against the real platform.

A buyer signs in, creates a 1-worker cluster, watches it run, sees how to connect, and deletes it; a page
on another site cannot act with the buyer's session; the provider and admin views show the machines.
Screenshots go to tests/artifacts/console/ (git-ignored).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest

from tests.integration import browser as browser_mod
from tests.integration.helpers import Api, wait_for
from worker import procs

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# Up to CREATE_ATTEMPTS clusters on a loaded host, each up to 300 s to run.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ARTIFACTS = browser_mod.ARTIFACTS / "console"
ENDED = ("failed", "expired", "terminated")
CREATE_ATTEMPTS = 3


@pytest.fixture
def browser(tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser_mod.chromium(tmp_path) as driver:
        yield driver


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class AttackerSite:
    """Another site (localhost, while the console is on 127.0.0.1) whose page posts a form to the console."""

    def __init__(self, root: Path, action_url: str):
        root.mkdir()
        (root / "index.html").write_text(
            f'<!doctype html><form id="f" method="post" action="{action_url}"><input name="x" value="1"></form>'
            '<script>document.getElementById("f").submit()</script>'
        )
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", procs.free_port()), handler)
        self.url = f"http://localhost:{self.server.server_port}/index.html"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def shot(driver, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def text_of(driver, css: str) -> str:
    try:
        elements = driver.find_elements(By.CSS_SELECTOR, css)
        return elements[0].text if elements else ""
    except StaleElementReferenceException:  # htmx swapped it while we read
        return ""


def wait_text(driver, css: str, predicate, timeout_s: float, what: str) -> str:
    return wait_for(
        lambda: (lambda t: t if predicate(t) else None)(text_of(driver, css)),
        timeout_s=timeout_s,
        interval_s=0.5,
        what=what,
    )


def sign_in(driver, url: str, username: str, password: str) -> None:
    driver.delete_all_cookies()
    driver.get(url + "/")
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "username"))
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "sign-in").click()
    wait_text(driver, "#who", lambda t: t.startswith(username), 30, f"{username} signed in")


def create_from_page(driver, url: str, *, name: str) -> str:
    """Fills the buyer's form for a 1-worker cluster once machines are on offer; returns the new cluster's id."""
    driver.get(url + "/")
    wait_text(driver, "#offers-table", lambda t: "CPU only" in t, 60, "machines on offer")
    driver.find_element(By.ID, "create-name").send_keys(name)
    workers = driver.find_element(By.ID, "create-workers")
    workers.clear()
    workers.send_keys("1")
    driver.find_element(By.ID, "create-min-reliability").send_keys("0.5")  # every fresh machine starts at 0.9
    driver.find_element(By.ID, "create-submit").click()
    WebDriverWait(driver, 30).until(lambda d: "/console/clusters/c-" in d.current_url)
    return driver.current_url.rsplit("/", 1)[1]


def accept_confirm(driver) -> bool:
    try:
        driver.switch_to.alert.accept()
        return True
    except NoAlertPresentException:
        return False


@pytest.fixture
def on_failure(browser):
    """Shows what the browser and the platform saw when the test fails."""
    notes: dict = {}

    @contextlib.contextmanager
    def watch():
        try:
            yield
        except BaseException:
            shot(browser, "failure")
            print(f"failed at {browser.current_url}")
            if notes.get("platform"):  # its logs outlive the session's temp dir
                logs = Path(notes["platform"].record["temp_dir"]) / "session_latest" / "logs"
                shutil.copytree(
                    logs,
                    ARTIFACTS / "platform-logs",
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.pb", "events"),
                )
            if notes.get("cluster_id"):
                cid, api = notes["cluster_id"], notes["api"]
                print(json.dumps(api.get(f"/v1/clusters/{cid}").json(), indent=1))
                print(json.dumps(api.get(f"/v1/clusters/{cid}/events").json(), indent=1))
            raise

    watch.notes = notes
    return watch


def test_console_buyer_provider_admin(market, platform, browser, on_failure, tmp_path):
    with on_failure():
        url = platform.url
        on_failure.notes["platform"] = platform
        buyer = Api.sign_up(url, "buyer")
        admin = platform.admin()
        providers = {m["id"]: m["provider"] for m in admin.get("/v1/machines").json() if m["id"] in market}

        # --- buyer: marketplace, create, watch it run, connection details ----------------------------
        sign_in(browser, url, buyer.username, buyer.password)
        assert "/login" not in browser.current_url
        wait_text(browser, "#offers-table", lambda t: "CPU only" in t, 30, "the marketplace's offers")
        wait_text(browser, "#usage-panel", lambda t: "Spent" in t, 30, "the spend panel")
        shot(browser, "1-buyer-home")

        cluster_id = None
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            cluster_id = create_from_page(browser, url, name=f"browser-{attempt}")
            on_failure.notes.update(cluster_id=cluster_id, api=buyer)
            wait_text(browser, "#events", lambda t: "created" in t, 30, "the first steps")
            if attempt == 1:
                shot(browser, "2-cluster-provisioning")
            status = wait_text(
                browser,
                "#cluster-status",
                lambda t: t == "running" or t in ENDED,
                300,
                "the cluster running (or ended) in the page",
            )
            if status == "running":
                break
            # A loaded host can lose a machine's heartbeats or time a `ray start` out: the page must say so,
            # and the test tries again rather than blame the console for the host.
            reason = buyer.get(f"/v1/clusters/{cluster_id}").json()["reason"]
            assert reason and reason[:40] in text_of(browser, "#status")
            print(f"attempt {attempt}: cluster {cluster_id} {status}: {reason}")
        else:
            pytest.fail(f"no cluster reached running in {CREATE_ATTEMPTS} attempts")
        wait_text(browser, "#connection", lambda t: "ray job submit" in t, 30, "the submit line")
        connection = buyer.get(f"/v1/clusters/{cluster_id}/connection").json()
        copied = browser.find_element(By.ID, "conn-submit").get_attribute("value")  # what the copy button copies
        assert copied == connection["ray_job_submit"]
        assert connection["ray_auth_token"] not in text_of(browser, "#connection")  # shown shortened only
        assert "1/1" in text_of(browser, "#workers-joined")
        shot(browser, "3-cluster-running")

        # --- another site posts a form to the console with the buyer's browser: nothing happens ------
        with AttackerSite(tmp_path / "attacker", f"{url}/console/clusters/{cluster_id}/delete") as attacker:
            browser.get(attacker.url)
            WebDriverWait(browser, 30).until(lambda d: d.current_url.startswith(url))  # the form was posted
        assert "/login" in browser.current_url  # the Strict cookie stayed home: the console saw no session
        assert buyer.get(f"/v1/clusters/{cluster_id}").json()["status"] == "running"

        # --- delete from the page, watch it terminate --------------------------------------------------
        browser.get(f"{url}/console/clusters/{cluster_id}")
        wait_text(browser, "#cluster-status", lambda t: t == "running", 30, "the cluster page again")
        browser.find_element(By.ID, "delete").click()
        assert WebDriverWait(browser, 10).until(accept_confirm)
        wait_text(browser, "#cluster-status", lambda t: t == "terminated", 120, "the cluster terminated in the page")
        assert buyer.get(f"/v1/clusters/{cluster_id}").json()["status"] == "terminated"
        shot(browser, "4-cluster-terminated")
        browser.get(url + "/")
        wait_text(browser, f'tr[data-cluster="{cluster_id}"]', lambda t: "terminated" in t, 30, "the list")

        # --- provider: its machine, live ---------------------------------------------------------------
        machine_id = market[0]
        browser.find_element(By.ID, "sign-out").click()
        WebDriverWait(browser, 30).until(lambda d: "/login" in d.current_url)
        # The market fixture signs its providers up with Api.sign_up's default password.
        sign_in(browser, url, providers[machine_id], "password123")
        wait_text(browser, f'tr[data-machine="{machine_id}"]', lambda t: "online" in t, 30, "the provider's machine")
        assert market[1] not in browser.page_source  # another provider's machine is not shown
        # Its machine's agent key: listed (never the secret), with a revoke button.
        wait_text(browser, "#machine-keys-table", lambda t: machine_id in t and "active" in t, 30, "the machine's key")
        assert browser.find_elements(By.CSS_SELECTOR, "#machine-keys-table button.revoke")
        assert "dcm." not in browser.page_source
        wait_text(browser, "#usage-panel", lambda t: "Earned" in t, 30, "the earnings panel")
        shot(browser, "5-provider")

        # --- admin: every account, machine and cluster ----------------------------------------------------
        creds = json.loads((platform.state_dir / "admin_credentials.json").read_text())
        sign_in(browser, url, creds["username"], creds["password"])
        wait_text(
            browser,
            "#accounts-table",
            lambda t: buyer.username in t and all(p in t for p in providers.values()),
            30,
            "every account",
        )
        for m in market:
            wait_text(browser, f'tr[data-machine="{m}"]', lambda t: "online" in t, 30, f"machine {m}")
        wait_text(browser, f'tr[data-cluster="{cluster_id}"]', lambda t: "terminated" in t, 30, "the buyer's cluster")
        shot(browser, "6-admin")
