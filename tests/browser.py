"""What the browser tests share: the real app on a free loopback port, a Chromium
page driven by Playwright, and a dropdown picker.

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

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(home: Path, model, access=None, seed: int = 3, **launch):
    """The app over `home` with `model` as its default, launched on a free port as
    the tests launch it (queue on, no thread lock); `launch` adds launch() options.
    `access` None: the environment's. Returns (demo, base url); close the demo."""
    from app import build_app, queued

    demo = build_app(home, default_model=str(model), rng=random.Random(seed), access=access)
    port = free_port()
    queued(demo).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch)
    return demo, f"http://127.0.0.1:{port}"


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
def app_url(tiny_llama, tmp_path):
    """The app over a fresh data root, on the tiny random Llama."""
    demo, url = serve(tmp_path / "home", tiny_llama)
    yield url
    demo.close()


@pytest.fixture
def page(patient_expect):
    """A Chromium page (1280 × 1400), closed after the test."""
    sync_api = _playwright()
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: apt-get install -y chromium (the README's test command does this)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        pg = browser.new_page(viewport={"width": 1280, "height": 1400})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()
