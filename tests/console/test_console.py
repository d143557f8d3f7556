"""The web console (/console on the admin listener) in a real browser: headless
Chromium driven by Selenium against a real server whose two iris versions have
drifted. A person's path through it: the model list, a traffic split changed
with the admin token (and refused without it), a progressive rollout started and
aborted, the drift alert and its per-feature charts, the latency charts; each
change is checked again over the JSON admin API, the page must never reload to
show it, and the page must pass basic accessibility checks. It also takes the
README's pictures (docs/images with `make screenshots`), including
`switchyard rollout status` as a terminal shows it.

The tests run in file order on one browser and one server (conftest.py): the
model page's picture shows the split the traffic test set, and the model list
comes after the request charts have data, so its last-minute columns have some."""

import html
import re
import subprocess

import requests

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
# The longest wait for anything (seconds); the live parts refresh every 3 s.
WAIT = 30

# What the tests read from the live parts, each in one script (see Console.js).
SHARES = """return Object.fromEntries(Array.from(
    document.querySelectorAll('#split [data-version][data-share]'),
    e => [e.getAttribute('data-version'), e.getAttribute('data-share')]));"""
DRIFT = """const d = document.querySelector('#drift');
if (!d) return null;
return Array.from(d.querySelectorAll('section.drift-version'), s => ({
    version: s.getAttribute('data-version'),
    alert: s.getAttribute('data-alert'),
    alerts: Array.from(s.querySelectorAll('.alert'), a => a.textContent),
    drifted: Array.from(s.querySelectorAll('figure.feature[data-drifted="true"]'),
                        f => [f.getAttribute('data-feature'), !!f.querySelector('svg')]),
}));"""


def split_is(console, want):
    """The legend shows `want` ({version: share}); shares compared as numbers."""
    got = console.js(SHARES) or {}
    return set(got) >= set(want) and all(abs(float(got[v]) - s) < 1e-9 for v, s in want.items())


def said(console, word):
    """#message reports `word` as done: a failure reads "Not applied: <the
    server's error>", which names the word too."""
    return re.search(rf"(?<!not ){word}", console.message(), re.IGNORECASE) is not None


def open_model(console):
    console.open("/console/models/iris")
    console.wait(lambda: console.js(SHARES), "the split's legend (#split [data-version][data-share])", "#split")


def test_console_is_served_on_the_admin_listener_only(console):
    s = console.server
    for path in ("/console", "/console/models/iris", "/console/models/iris/live"):
        assert requests.get(console.admin + path, timeout=10).status_code == 200, path
        # The public port serves predictions; the console changes policies.
        r = requests.get(f"http://{s.http}{path}", timeout=10)
        assert r.status_code == 404, (path, r.status_code, r.text[:300])


def test_a_change_without_the_token_is_refused_and_changes_nothing(console):
    open_model(console)
    before, shares = console.traffic(), console.js(SHARES)
    console.fill("#token", "")
    console.fill('input[name="weight-1"]', "70")
    console.fill('input[name="weight-2"]', "30")
    console.submit("form#traffic-form")
    # The server's 401 says "admin calls need 'Authorization: Bearer <token>'".
    console.wait(lambda: "token" in console.message().lower(), "#message to name the token", "#message")
    assert "Authorization: Bearer" in console.message() and not said(console, "applied"), console.message()
    assert console.traffic()["weights"] == before["weights"]
    assert console.js(SHARES) == shares, console.excerpt("#split")


def test_a_traffic_split_applies_and_shows_without_a_reload(console):
    open_model(console)
    # A page that reloaded would lose this.
    console.js("window.__marker = 1")
    console.fill("#token", console.token)
    console.fill('input[name="weight-1"]', "70")
    console.fill('input[name="weight-2"]', "30")
    console.submit("form#traffic-form")
    console.wait(lambda: said(console, "applied"), "#message to say the change was applied", "#message")
    console.wait(lambda: split_is(console, {"1": 0.7, "2": 0.3}), "#split to show 0.7 and 0.3", "#split")
    assert console.js("return window.__marker") == 1, "the page reloaded"
    assert console.traffic()["weights"] == {"1": 70, "2": 30}


def test_the_drift_alert_and_each_drifted_feature_show(console):
    open_model(console)
    versions = console.wait(lambda: (v := console.js(DRIFT)) and len(v) >= 2 and all(x["alert"] == "true" for x in v) and v,
                            "both versions' drift sections with data-alert=true", "#drift")
    for v in versions:
        assert any("Drift alert" in a for a in v["alerts"]), (v, console.excerpt("#drift"))
        # Every input feature moved by three standard deviations.
        drifted = {name for name, _ in v["drifted"]}
        assert set(FEATURES) <= drifted, (v["version"], drifted)
        assert all(has_svg for _, has_svg in v["drifted"]), (v, console.excerpt("#drift"))
    assert {v["version"] for v in versions} >= {"1", "2"}, versions


def test_latency_is_charted(console):
    """The trickle of requests shows in every chart once a 5-second window
    closes (a series is a polyline, a lone window a circle)."""
    open_model(console)
    console.wait(lambda: console.js("""
        const charts = Array.from(document.querySelectorAll('#latency svg'));
        return charts.length >= 1 && charts.every(svg => svg.querySelector('polyline, circle'));"""),
                 "data in every SVG chart of #latency", "#latency")


def test_index_lists_every_version_and_links_to_the_model(console):
    console.open("/console")
    assert [h.strip() for h in console.js("return Array.from(document.querySelectorAll('h1'), h => h.textContent)")] \
        == ["Switchyard console"], console.excerpt("h1")
    rows = console.js("return Array.from(document.querySelectorAll('table#models tbody tr'), r => r.textContent)")
    # One row per model version: iris 1 and iris 2.
    assert rows is not None and len(rows) == 2 and all("iris" in r for r in rows), console.excerpt("table#models")
    console.capture("console-index.png")
    console.element('table#models a[href="/console/models/iris"]').click()
    console.wait(lambda: console.driver.current_url.endswith("/console/models/iris"), "the model's page",
                 'table#models a[href="/console/models/iris"]')
    console.wait(lambda: "iris" in (console.text("h1") or ""), "an h1 naming iris", "h1")


def test_the_pages_pass_basic_accessibility_checks(console):
    for path in ("/console", "/console/models/iris"):
        console.open(path)
        problems = console.js("""
            const bad = [];
            const h1 = document.querySelectorAll('h1').length;
            if (h1 !== 1) bad.push(`${h1} h1 elements, not one`);
            for (const e of document.querySelectorAll('input, select, textarea')) {
                if (['hidden', 'submit', 'button', 'reset'].includes(e.type)) continue;
                const label = e.id && document.querySelector(`label[for="${CSS.escape(e.id)}"]`);
                if (!label && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
                    bad.push('no label: ' + e.outerHTML);
            }
            for (const svg of document.querySelectorAll('svg')) {
                const title = Array.from(svg.children).find(c => c.tagName.toLowerCase() === 'title');
                const named = (svg.getAttribute('aria-label') || '').trim() || (title && title.textContent.trim());
                if (svg.getAttribute('role') !== 'img' || !named)
                    bad.push('svg without role="img" and a name: ' + svg.outerHTML.slice(0, 200));
            }
            return bad;""")
        assert problems == [], (path, problems)
    token = console.element("#token")
    assert token.get_attribute("type") == "password"
    assert console.js("return document.querySelector('label[for=\"token\"]')?.textContent.trim()") == "Admin token"
    # Results of changes are announced to screen readers.
    assert console.attribute("#message", "role") == "status"
    assert console.attribute("#message", "aria-live") == "polite"


def test_picture_of_the_model_page(console):
    """The README's picture: the split just set, lines in the request charts
    (two windows at least) and the drift alert."""
    open_model(console)
    console.wait(lambda: split_is(console, {"1": 0.7, "2": 0.3}) and console.js(DRIFT), "the split and drift", "#split")
    console.wait(lambda: console.js("return !!document.querySelector('#latency svg polyline')"),
                 "a line in the request charts", "#latency")
    console.capture("console-model.png")


def test_a_rollout_starts_and_aborts(console):
    # The candidate rolls out against the version with the most weight: 1, as
    # the traffic test left it (set again so this test stands alone).
    r = console.api.put(f"{console.admin}/admin/models/iris/traffic", json={"weights": {"1": 70, "2": 30}}, timeout=10)
    assert r.status_code == 200, r.text
    open_model(console)
    console.js("window.__marker = 1")
    console.fill("#token", console.token)
    console.fill("select#candidate", "2")
    console.fill("#step", "10")
    console.fill("#max", "50")
    # An hour a step: it stays progressing for the whole test.
    console.fill("#interval", "1h")
    console.submit("form#rollout-form")
    console.wait(lambda: said(console, "started"), "#message to say the rollout started", "#message")
    console.wait(lambda: console.attribute("#rollout", "data-phase") == "progressing",
                 '#rollout[data-phase="progressing"]', "#rollout")
    console.wait(lambda: console.js("return !!document.querySelector('#rollout svg#rollout-timeline')"
                                    " && document.querySelectorAll('table#rollout-steps tbody tr').length >= 1"),
                 "the timeline (svg#rollout-timeline) and a step (table#rollout-steps tbody tr)", "#rollout")
    status = console.rollout()
    assert status and status["phase"] == "progressing" and status["spec"]["candidate"] == "2", status
    assert status["spec"]["interval"] == "1h" and status["spec"]["max_weight"] == 50, status
    # The rollout's section: its heading, the live state, the forms.
    console.capture("console-rollout.png", "#rollout", closest="section")

    # Found and clicked in one script: the button lives in a part the page
    # replaces when it changes, so a handle held across calls can go stale.
    console.js("document.querySelector('button#abort').click();")

    def aborted():
        return console.attribute("#rollout", "data-phase") == "aborted"

    console.wait(aborted, '#rollout[data-phase="aborted"]', "#rollout")
    console.wait(lambda: said(console, "aborted"), "#message to say the rollout was aborted", "#message")
    assert console.js("return window.__marker") == 1, "the page reloaded"
    assert console.rollout()["phase"] == "aborted"


# The SGR colours `switchyard rollout status` prints through comfy-table and
# crossterm (38;5;N for N < 16; 30-37 and 90-97 too), drawn with a dark theme.
PALETTE = ["#3b4048", "#e06c75", "#98c379", "#e5c07b", "#61afef", "#c678dd", "#56b6c2", "#abb2bf",
           "#5c6370", "#ff7b86", "#b5e890", "#f0d58a", "#7cc4ff", "#d99ef0", "#6fd6e3", "#ffffff"]
CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def colour(n):
    """An xterm 256-colour index as CSS."""
    if n < 16:
        return PALETTE[n]
    if n < 232:
        n -= 16
        level = [0, 95, 135, 175, 215, 255]
        return "#%02x%02x%02x" % (level[n // 36], level[n // 6 % 6], level[n % 6])
    grey = 8 + 10 * (n - 232)
    return "#%02x%02x%02x" % (grey, grey, grey)


def ansi_to_html(text):
    """Terminal output as HTML spans: SGR colours and bold kept, every other
    escape sequence (cursor moves, clears) dropped."""
    out, fg, bold, pos = [], None, False, 0

    def emit(chunk):
        if not chunk:
            return
        style = ";".join(s for s in (fg and f"color:{fg}", bold and "font-weight:bold") if s)
        out.append(f'<span style="{style}">{html.escape(chunk)}</span>' if style else html.escape(chunk))

    text = text.replace("\r\n", "\n").replace("\r", "")
    for m in CSI.finditer(text):
        emit(text[pos:m.start()])
        pos = m.end()
        if m.group(2) != "m":
            continue
        codes = [int(c) if c.isdigit() else 0 for c in m.group(1).split(";")]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                fg, bold = None, False
            elif c == 1:
                bold = True
            elif c == 22:
                bold = False
            elif c == 39:
                fg = None
            elif 30 <= c <= 37:
                fg = PALETTE[c - 30]
            elif 90 <= c <= 97:
                fg = PALETTE[c - 90 + 8]
            elif c == 38 and i + 2 < len(codes) and codes[i + 1] == 5:
                fg, i = colour(codes[i + 2]), i + 2
            elif c == 38 and i + 4 < len(codes) and codes[i + 1] == 2:
                fg, i = "#%02x%02x%02x" % tuple(codes[i + 2:i + 5]), i + 4
            i += 1
    emit(text[pos:])
    return "".join(out)


TERMINAL_PAGE = """<!doctype html><html><head><meta charset="utf-8"><style>
body {{ margin: 0; padding: 24px; background: transparent; }}
.terminal {{ display: inline-block; background: #1e2127; color: #abb2bf; border-radius: 8px;
  padding: 14px 18px 18px; }}
.bar {{ height: 12px; margin-bottom: 12px; }}
.bar i {{ display: inline-block; width: 12px; height: 12px; border-radius: 6px; margin-right: 6px; }}
pre {{ margin: 0; font: 14px/1.35 "DejaVu Sans Mono", "Liberation Mono", monospace; }}
.prompt {{ color: #98c379; }}
</style></head><body><div class="terminal">
<div class="bar"><i style="background:#ff5f56"></i><i style="background:#ffbd2e"></i><i style="background:#27c93f"></i></div>
<pre><span class="prompt">$</span> {command}
{output}</pre></div></body></html>
"""


def test_picture_of_rollout_status_in_a_terminal(console, tmp_path):
    """`switchyard rollout status` as a person sees it: util-linux's script(1)
    gives it a terminal (so it colours its output), and Chromium draws that."""
    s, api = console.server, console.api
    base = f"{console.admin}/admin/models/iris/rollout"
    if (console.rollout() or {}).get("phase") == "progressing":
        api.delete(base, timeout=10)
    # Stable is the version with the most weight: 1 against candidate 2.
    r = api.put(f"{console.admin}/admin/models/iris/traffic", json={"weights": {"1": 70, "2": 30}}, timeout=10)
    assert r.status_code == 200, r.text
    r = api.post(base, json={"candidate": "2", "step_weight": 10, "max_weight": 50, "interval": "1h"}, timeout=10)
    assert r.status_code == 200, r.text
    try:
        binary = s.proc.args[0]
        shown = f"switchyard rollout status iris --server http://{s.admin} --token …"
        command = f"{binary} rollout status iris --server http://{s.admin} --token {console.token}"
        # A terminal 140 columns wide: script's pseudo-terminal has no size of
        # its own, and the tables wrap to it.
        run = subprocess.run(["script", "-qec", f"stty cols 140 rows 50; {command}", "/dev/null"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=WAIT)
        assert run.returncode == 0, run.stdout + run.stderr
        raw = run.stdout
        plain = CSI.sub("", raw)
        assert "candidate 2 against stable 1" in plain, plain
        assert "\x1b[" in raw, "no colour: the verb did not see a terminal"
        (tmp_path / "terminal.html").write_text(
            TERMINAL_PAGE.format(command=html.escape(shown), output=ansi_to_html(raw.rstrip())))
        console.driver.get((tmp_path / "terminal.html").as_uri())
        # A transparent page: the window's rounded corners sit on any README background.
        console.driver.execute_cdp_cmd("Emulation.setDefaultBackgroundColorOverride",
                                       {"color": {"r": 0, "g": 0, "b": 0, "a": 0}})
        try:
            console.capture("terminal-rollout.png", ".terminal", margin=0)
        finally:
            console.driver.execute_cdp_cmd("Emulation.setDefaultBackgroundColorOverride", {})
    finally:
        api.delete(base, timeout=10)


def test_the_page_logged_no_script_error(console):
    """Every page this module opened ran without a script error (failed
    fetches, such as the 401 the no-token test provokes, are not script errors)."""
    errors = [e for e in console.driver.get_log("browser")
              if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
    assert errors == [], errors
