"""What the browser tests share: the real app on a free loopback port, a Chromium
page driven by Playwright (a test fails on any uncaught error in its pages), the
Dataset tab opened, a dropdown picker, and a check that a chart is really drawn.
No test launches Chromium itself: each takes `page` or `chromium`.

Playwright is imported only inside the fixtures, so the unit tests collect and
run where it is not installed; conftest.py exposes the fixtures to every test file.
"""

from __future__ import annotations

import random
import re
import shutil
import socket
from pathlib import Path

import pytest

from helpers import mark_users

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(home: Path, model, access=None, seed: int = 3):
    """The app over `home` with `model` as its default, served by uvicorn on a free loopback
    port in a thread, as `python app.py` serves it. `access` None: the environment's.
    Returns (the app, base url); close the app."""
    from app import build_app

    tuner = build_app(home, default_model=str(model), rng=random.Random(seed), access=access)
    return tuner, tuner.start("127.0.0.1", free_port())


def home_with_runs(tmp_path: Path, model, names: list[str], max_steps: int = 3) -> Path:
    """A data root over `tmp_path` holding a finished LoRA run of `model` per name (a few
    steps on six "Say hi" rows), for a browser test that starts where runs exist."""
    import json

    from tuner.config import TrainConfig
    from tuner.paths import Layout
    from tuner.runs import RunManager

    home = tmp_path / "home"
    layout = Layout(home)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say hi {i}"},
                                                     {"role": "assistant", "content": "Hello there!"}]}) + "\n"
                            for i in range(6)), encoding="utf-8")
    manager = RunManager(layout.runs, layout.models)
    for name in names:
        manager.start(TrainConfig(base_model=str(model), dataset=str(data), run_name=name, max_steps=max_steps,
                                  test_fraction=0, validation_fraction=0))
        state = manager.wait(120)
        assert state.status == "completed", state.message
    return home


def opened(page, app_url: str):
    """The page at `app_url`, once the Dataset tab shows the default starter set; its message line."""
    from playwright.sync_api import expect

    page.goto(app_url)
    message = page.locator("#dataset-message")
    expect(message).to_contain_text("26 rows")
    return message


def pick(page, elem_id: str, option: str) -> None:
    """Open the dropdown `elem_id` and click its first option whose name contains `option`."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=re.compile(re.escape(option))).first.click()


def _playwright():
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("Playwright is missing: pip install -r tests/requirements.txt (browser tests only)")
    return sync_api


@pytest.fixture
def patient_expect():
    """Playwright's expect() waits 5 s by default; on two shared cores a page
    update after a model call can take longer, so browser tests wait up to 30 s."""
    _playwright().expect.set_options(timeout=30_000)


@pytest.fixture
@mark_users("browser", "server")
def app_url(tiny_llama, tmp_path):
    """The app over a fresh data root, on the tiny random Llama."""
    demo, url = serve(tmp_path / "home", tiny_llama)
    yield url
    demo.close()


LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


class Chromium:
    """Debian's Chromium under Playwright, with every uncaught page error of every page
    it opens kept: a script error in the page is a defect a person would meet (a chart
    that throws stops drawing), so the `chromium` fixture fails the test on any."""

    def __init__(self, browser):
        self.browser = browser
        self.errors: list[str] = []

    def new_context(self, **options):
        """A context of its own (its own cookies), as a second person's browser; its pages' errors are kept."""
        context = self.browser.new_context(**options)
        context.on("page", self._watch)
        return context

    def new_page(self, **context_options):
        """A page (1280 × 1400 unless told) in a context of its own."""
        context_options.setdefault("viewport", {"width": 1280, "height": 1400})
        pg = self.new_context(**context_options).new_page()
        pg.set_default_timeout(60_000)
        return pg

    def _watch(self, pg) -> None:
        pg.on("pageerror", lambda error: self.errors.append(
            f"{pg.url}: {error.stack or f'{error.name}: {error.message}'}"))

    def close(self) -> None:
        if self.browser.is_connected():
            self.browser.close()

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        return None  # the fixture closes the browser, then checks the errors


@pytest.fixture
@mark_users("browser")
def chromium(patient_expect):
    """A Chromium for the test's pages (Chromium.new_page), closed after the test; the
    test fails at teardown if any page had an uncaught error."""
    sync_api = _playwright()
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: apt-get install -y chromium (the README's test command does this)")
    with sync_api.sync_playwright() as p:
        browser = Chromium(p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS))
        yield browser
        browser.close()
    if browser.errors:
        pytest.fail(f"{len(browser.errors)} uncaught page error(s):\n" + "\n\n".join(browser.errors),
                    pytrace=False)


@pytest.fixture
def page(chromium):
    """A Chromium page (1280 × 1400), closed after the test, which fails on any uncaught page error."""
    return chromium.new_page()


# Vega draws a chart's data as groups of class "role-mark" in an svg (or onto a canvas);
# what is measured is the box those marks span, for a blank chart once had its
# legend and every point in the page, all squeezed into a plot of zero width.
_MEASURE_CHART = """el => {
    const box = el.getBoundingClientRect();
    const out = {width: box.width, height: box.height, visible: box.width > 0 && box.height > 0
                 && getComputedStyle(el).visibility !== 'hidden', marks: 0, spanWidth: 0, spanHeight: 0,
                 canvasInk: 0};
    const marks = [...el.querySelectorAll('svg .role-mark path, svg .role-mark line, svg .role-mark rect')];
    let left = Infinity, right = -Infinity, top = Infinity, bottom = -Infinity;
    for (const m of marks) {
        const r = m.getBoundingClientRect();
        if (r.width === 0 && r.height === 0) continue;
        out.marks += 1;
        left = Math.min(left, r.left); right = Math.max(right, r.right);
        top = Math.min(top, r.top); bottom = Math.max(bottom, r.bottom);
    }
    if (out.marks) { out.spanWidth = right - left; out.spanHeight = bottom - top; }
    for (const c of el.querySelectorAll('canvas')) {
        if (!c.width || !c.height) continue;
        const context = c.getContext('2d');
        if (!context) continue;
        const data = context.getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < data.length; i += 4) if (data[i]) out.canvasInk += 1;
        if (out.canvasInk) { const r = c.getBoundingClientRect(); out.spanWidth = r.width; out.spanHeight = r.height; }
    }
    return out;
}"""


def assert_chart_drawn(chart, min_size: int = 100, timeout: float = 30.0) -> dict:
    """Wait until the chart `chart` (a Playwright locator of a gr.Plot or gr.LinePlot) is
    drawn: visible, at least `min_size` pixels wide and high, with data marks that span
    some width (marks squeezed into a plot of no width span one point's) or a canvas
    with ink. Returns the measure."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        seen = chart.evaluate(_MEASURE_CHART) if chart.count() == 1 else {"count": chart.count()}
        drawn = (seen.get("visible") and seen["width"] >= min_size and seen["height"] >= min_size
                 and (seen["marks"] or seen["canvasInk"]) and seen["spanWidth"] >= 20 and seen["spanHeight"] >= 1)
        if drawn:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"the chart {chart} is not drawn: {seen}")
        time.sleep(0.25)
