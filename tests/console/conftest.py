"""Fixtures for the console's browser test: a server with two iris versions whose
inputs have drifted, headless Chromium driven by Selenium, and a `Console` that
the tests use to open pages, wait for the live parts, fill forms and take
screenshots. On a failure the page's HTML and a picture of it are kept in
pytest's tmp folder and named in the report."""

import base64
import csv
import os
import pathlib
import shutil
import statistics
import threading
import time

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import (
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "console-test-token"
# Debian's packages (scripts/setup-chromium.sh): Selenium Manager never
# downloads a browser or driver of its own.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--window-size=1280,2000",
]
# The longest wait for anything (seconds); the live parts refresh every 3 s.
WAIT = 30


def reference_rows():
    with open(ROOT / "models" / "iris" / "reference.csv", newline="") as f:
        reader = csv.reader(f)
        next(reader)  # sepal_length, sepal_width, petal_length, petal_width
        return [[float(x) for x in row] for row in reader]


def infer_body(row):
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row}]}


@pytest.fixture(scope="module")
def server(switchyard, tmp_path_factory):
    """`switchyard serve` with the admin token set, over a copy of iris as two
    versions (both with the drift baseline), after traffic that makes both
    versions' inputs drift, and under a steady trickle of requests while the
    module runs (the console charts requests per 5-second window)."""
    repo = tmp_path_factory.mktemp("models")
    for version in ("1", "2"):
        shutil.copytree(ROOT / "models" / "iris" / "1", repo / "iris" / version)
    # Both versions serve (the default policy serves only the latest), so the
    # console has a split to draw and a candidate to roll out.
    (repo / "iris" / "config.toml").write_text("[version_policy]\nall = true\n")
    # No load balancer drains it here: it may stop at once.
    s = switchyard("--admin-token", TOKEN, "--shutdown-delay", "0s", models=repo)

    rows = reference_rows()
    # Every feature moved by three standard deviations: all four drift.
    std = [statistics.pstdev(column) for column in zip(*rows)]
    shifted = [[x + 3 * sd for x, sd in zip(row, std)] for row in rows]
    with requests.Session() as http:
        # Normal traffic first (no policy yet: the default version, 2, takes
        # it); the drifted rows come after it and fill most of each window.
        for row in rows[:30]:
            r = http.post(f"http://{s.http}/v2/models/iris/infer", json=infer_body(row), timeout=10)
            assert r.status_code == 200, r.text
        # 150 requests a version: past min_rows (100) in both drift windows.
        for version in ("1", "2"):
            for row in shifted:
                r = http.post(f"http://{s.http}/v2/models/iris/versions/{version}/infer",
                              json=infer_body(row), timeout=10)
                assert r.status_code == 200, r.text
        # The monitor bins off the request path: wait until both alerts fire.
        deadline = time.time() + WAIT
        for version in ("1", "2"):
            while True:
                report = http.get(f"http://{s.http}/v2/models/iris/versions/{version}/drift", timeout=10).json()
                if report.get("alert"):
                    break
                assert time.time() < deadline, f"version {version}'s drift alert never fired: {report}"
                time.sleep(0.1)

    # About 20 requests a second that name no version, so the split set in the
    # page shows in the request charts; drifted rows, as the world has moved.
    stop, failures = threading.Event(), []

    def trickle():
        with requests.Session() as http:
            for i in range(100_000):  # bounded: 100,000 requests at most, should the stop never come
                if stop.wait(0.05):
                    return
                try:
                    r = http.post(f"http://{s.http}/v2/models/iris/infer",
                                  json=infer_body(shifted[i % len(shifted)]), timeout=10)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                except requests.RequestException as e:
                    failures.append(repr(e))

    steady = threading.Thread(target=trickle, daemon=True)
    steady.start()
    yield s
    stop.set()
    steady.join(timeout=15)
    # Every request succeeded, through the split changes and the rollout.
    assert not failures, failures[:5]


class Console:
    """The browser on the server's admin listener, and the test's helpers."""

    def __init__(self, driver, server, shots, failures):
        self.driver = driver
        self.server = server
        self.admin = f"http://{server.admin}"
        self.token = TOKEN
        self.shots = shots
        self.failures = failures
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Bearer {TOKEN}"

    # --- pages -------------------------------------------------------------

    def open(self, path):
        self.driver.get(self.admin + path)

    def js(self, script, *args):
        """Reads the page in one script: the live parts are swapped every 3 s,
        so element handles kept across a refresh would go stale."""
        return self.driver.execute_script(script, *args)

    def excerpt(self, selector=None, limit=4000):
        """The HTML around `selector` (the whole body when it is not there), for
        a failure's message."""
        html = self.js(
            "const e = arguments[0] && document.querySelector(arguments[0]);"
            "return e ? e.outerHTML : (document.body ? document.body.outerHTML : document.documentElement.outerHTML);",
            selector)
        found = "" if not selector or self.js("return !!document.querySelector(arguments[0])", selector) \
            else f"(no element matches {selector}; the body follows)\n"
        return found + (html if len(html) <= limit else html[:limit] + f"\n… ({len(html) - limit} more characters)")

    def wait(self, condition, what, selector=None, timeout=WAIT):
        """Waits until `condition()` is truthy and returns its value; on a
        timeout, fails naming `what` and showing the page around `selector`."""
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                                 ignored_exceptions=(StaleElementReferenceException,)).until(lambda _: condition())
        except TimeoutException:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; the page has:\n"
                                 + self.excerpt(selector)) from None

    def element(self, selector):
        found = self.driver.find_elements(By.CSS_SELECTOR, selector)
        assert found, f"no element matches {selector}; the page has:\n{self.excerpt()}"
        return found[0]

    def text(self, selector):
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", selector)

    def attribute(self, selector, name):
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
                       selector, name)

    def fill(self, selector, value):
        """Types `value` into an input, or picks it in a select."""
        e = self.element(selector)
        if e.tag_name == "select":
            Select(e).select_by_value(value)
        else:
            e.clear()
            if value:
                e.send_keys(value)

    def submit(self, form):
        """Clicks the form's submit button, as a person would (a script's
        form.submit() would skip the page's own handler)."""
        self.element(f"{form} [type=submit], {form} button:not([type])").click()

    def message(self):
        return self.text("#message") or ""

    # --- the JSON API --------------------------------------------------------

    def traffic(self):
        r = self.api.get(f"{self.admin}/admin/models/iris/traffic", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def rollout(self):
        r = self.api.get(f"{self.admin}/admin/models/iris/rollout", timeout=10)
        return r.json() if r.status_code == 200 else None

    # --- pictures ----------------------------------------------------------

    def capture(self, name, selector=None, closest=None, margin=16):
        """A PNG of the whole page, however tall (Chromium's captureBeyondViewport),
        or of the element `selector` (or its closest ancestor matching
        `closest`) with `margin` pixels around it."""
        self.js("window.scrollTo(0, 0)")
        if selector is None:
            width = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]["width"]
            # The content's own height: the document is never shorter than the
            # 2000-pixel window, which would leave a short page mostly blank.
            height = self.js("""
                const bottom = Math.max(0, ...Array.from(document.body.children, e => e.getBoundingClientRect().bottom));
                return Math.ceil(bottom + window.scrollY + parseFloat(getComputedStyle(document.body).marginBottom) + 16);""")
            clip = {"x": 0, "y": 0, "width": width, "height": height}
        else:
            self.element(selector)
            x, y, w, h = self.js("""
                const e = document.querySelector(arguments[0]);
                const r = ((arguments[1] && e.closest(arguments[1])) || e).getBoundingClientRect();
                return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height];""", selector, closest)
            clip = {"x": max(0, x - margin), "y": max(0, y - margin), "width": w + 2 * margin, "height": h + 2 * margin}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}})
        path = self.shots / name
        path.write_bytes(base64.b64decode(shot["data"]))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        return path

    def keep_failure(self, name):
        """The page's HTML and a picture of it, for a failed test's report."""
        base = self.failures / name
        base.with_suffix(".html").write_text(self.driver.page_source)
        self.driver.save_screenshot(str(base.with_suffix(".png")))
        return base


@pytest.fixture(scope="module")
def console(server, tmp_path_factory):
    """Headless Chromium (Debian's, through its chromedriver) on the admin
    listener; quit with the module whatever happens."""
    work = tmp_path_factory.mktemp("chromium")
    # The README's pictures with `make screenshots`; otherwise pytest's tmp
    # folder, so a test run never writes into the repository.
    shots = pathlib.Path(os.environ["CONSOLE_SCREENSHOTS"]) if os.environ.get("CONSOLE_SCREENSHOTS") \
        else tmp_path_factory.mktemp("screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    # A fresh profile: no state from another run, and none left in $HOME.
    options.add_argument(f"--user-data-dir={work / 'profile'}")
    # The page's console messages, read by the last test for script errors.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, log_output=str(work / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield Console(driver, server, shots, tmp_path_factory.mktemp("failures"))
    finally:
        driver.quit()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser test keeps the page it failed on (HTML and PNG in the
    tmp folder) and says where in its report."""
    outcome = yield
    report = outcome.get_result()
    console = item.funcargs.get("console") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and console is not None:
        try:
            base = console.keep_failure(item.name)
            report.sections.append(("console page", f"the page as it failed: {base}.html and {base}.png"))
        except WebDriverException as e:
            report.sections.append(("console page", f"could not keep the page: {e}"))
