"""Shared fixtures: cheap models built once per test session, tmp data roots, the results
tables of a rated evaluation, and the browser tests' app and page (tests/browser.py).

Every test is marked by what it needs (pytest.ini registers the marks): `browser` (drives
Chromium), `server` (starts the app's server), `slow` (trains beyond a few steps, or
otherwise takes several seconds). A fixture that needs one is decorated
@mark_users(...) (tests/helpers.py) and pytest_collection_modifyitems gives the mark to
every test whose fixture closure holds it: `page`, `chromium` → browser; `app_url` →
browser and server; `bundled_models_dir` → slow. A test that starts a server itself, or
trains for seconds, carries the mark (pytestmark or @pytest.mark.…). A test that starts
the app's server without the `server` mark fails, so the inner loop
(`-m "not browser and not server and not slow"`) never starts one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tuner import models, tiny  # noqa: E402

# the browser tests' fixtures (Playwright is imported only when one of them runs)
from browser import app_url, chromium, page, patient_expect  # noqa: E402, F401
from helpers import POLITE, chat, mark_users, write_jsonl  # noqa: E402, F401 (older imports from conftest)

def pytest_collection_modifyitems(config, items):
    """Give each test the marks that the fixtures of its closure ask for with @mark_users
    (browser.py's chromium: browser; app_url: browser and server)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        wanted = set()
        definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        for name in names:
            for fixturedef in definitions.get(name, ()):
                wanted.update(getattr(fixturedef.func, "marks_users", ()))
        for mark in sorted(wanted - {m.name for m in item.iter_markers()}):
            item.add_marker(mark)


_running: list = []  # the test now running, while it runs


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.remove(item)


def pytest_configure(config):
    """A server started by a test not marked `server` is refused: the app is served by
    uvicorn (app.Tuner.start), so every uvicorn.Server made in a test is checked.

    The tests' small stand-in servers (the judge's chat endpoint, the sign-in provider) run
    socketserver's serve_forever, which looks for shutdown() every poll_interval: 0.5 s by
    default, waited at every such test's teardown; here 0.05 s."""
    import socketserver

    import uvicorn

    config._tuner_poll_interval = socketserver.BaseServer.serve_forever.__defaults__
    socketserver.BaseServer.serve_forever.__defaults__ = (0.05,)

    made = uvicorn.Server.__init__

    def checked(server, *args, **kwargs):
        item = _running[-1] if _running else None
        if item is not None and item.get_closest_marker("server") is None:
            raise RuntimeError(f"{item.nodeid} starts a server but is not marked `server`: add "
                               "pytestmark = pytest.mark.server, @pytest.mark.server, or "
                               "@mark_users(\"server\") on the fixture that starts it (tests/helpers.py)")
        made(server, *args, **kwargs)

    uvicorn.Server.__init__ = checked
    config._tuner_uvicorn_init = made


def pytest_unconfigure(config):
    import socketserver

    if getattr(config, "_tuner_poll_interval", None) is not None:
        socketserver.BaseServer.serve_forever.__defaults__ = config._tuner_poll_interval
    made = getattr(config, "_tuner_uvicorn_init", None)
    if made is not None:
        import uvicorn

        uvicorn.Server.__init__ = made


@pytest.fixture(scope="session")
def smollm2_tokenizer(tmp_path_factory):
    """The bundled model's tokenizer, read from its GGUF file (no download)."""
    try:
        return tiny.smollm2_tokenizer(tmp_path_factory.mktemp("smollm2-tokenizer"))
    except models.ModelUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smollm2_tokenizer):
    """A random-weight Llama (hidden 64, 2 layers) with the SmolLM2 tokenizer,
    saved as a local model folder: loads in under a second, trains a step in ~0.5 s."""
    return tiny.build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_tokenizer)


@pytest.fixture(scope="session")
@mark_users("slow")
def bundled_models_dir(tmp_path_factory):
    """A models folder holding the bundled SmolLM2 converted from its GGUF (~20 s, once)."""
    folder = tmp_path_factory.mktemp("models")
    models.resolve(models.BUNDLED, folder)
    return folder


@pytest.fixture(scope="session")
def trained_run(tiny_llama, tmp_path_factory):
    """A LoRA run of the tiny Llama, trained to say "Hello there, friend!"; its adapter folder."""
    root = tmp_path_factory.mktemp("gen-home")
    rows = [chat(f"Say hi {i}", "Hello there, friend!") for i in range(8)]
    dataset = write_jsonl(root / "d.jsonl", rows)
    from tuner.config import TrainConfig
    from tuner.runs import RunManager

    trainer = RunManager(root / "runs", root / "models")
    trainer.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), learning_rate=3e-2,
                              num_train_epochs=10, test_fraction=0.0, validation_fraction=0.0, lora_dropout=0.0))
    state = trainer.wait(300)
    assert state.status == "completed", state.message
    return root / "runs" / state.run_id / "adapter"


@pytest.fixture
def home(tmp_path):
    """A fresh data root."""
    from tuner.paths import Layout

    return Layout(tmp_path / "home")


@pytest.fixture
def results(tmp_path):
    """filled_store's rated evaluation (tests/helpers.py) and its tables (ratings.tables.gather, 4 or
    more succeeds): (the store, the tables)."""
    from helpers import filled_store
    from ratings import tables

    store, eval_id = filled_store(tmp_path / "ratings.db")
    return store, tables.gather(store, eval_id, 4)
