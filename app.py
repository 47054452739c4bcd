"""Tuner: fine-tune a small chat model in the browser, then prove it got better.

    python app.py            # serves on http://localhost:7860 (GRADIO_SERVER_PORT honoured)

Environment: TUNER_HOME (data root; uploads are kept in its uploads/ folder), TUNER_MODEL
(the model picked at start), TUNER_OWNER_PASSWORD and/or TUNER_OWNER (owner-only mode; see
tuner/access.py), TUNER_MAX_UPLOAD and TUNER_UPLOAD_TOTAL (the upload caps).
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tuner import zerogpu

if zerogpu.enabled():  # a ZeroGPU Space: its package patches torch, so it comes first
    import spaces  # noqa: F401

import gradio as gr  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from starlette.responses import RedirectResponse  # noqa: E402

from ratings.store import Store
from tuner import models
from tuner.ui import access as ui_access
from tuner.ui import compare, dataset, export, leaderboard, playground, rate, results, train, widgets
from tuner.access import Access, Sessions, app_secret
from tuner.generate import Generator
from tuner.paths import Layout, data_root, max_upload
from tuner.runs import RunManager


UPLOAD_LIFETIME = (600, 3600)  # (every, older than) in seconds: Gradio's delete_cache


@dataclass
class Tuner:
    """The server: one FastAPI app (`api`) holding the owner's studio at / and the raters'
    page at /rate/, each a Blocks mounted with gr.mount_gradio_app, the plain routes for
    sign-in and rating, and the gate in front of all of it (tuner/ui/access.py)."""
    api: FastAPI
    studio: gr.Blocks
    raters: gr.Blocks
    gate: ui_access.Gate | None = None
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    def start(self, host: str = "127.0.0.1", port: int = 7860) -> str:
        """Serve in a background thread (the tests); returns the base URL once it answers."""
        self.server = uvicorn.Server(server_config(self.api, host, port))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="tuner-server")
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.02)
        return f"http://{host}:{port}"

    def close(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
        for blocks in (self.studio, self.raters):
            blocks.close()


def server_config(api: FastAPI, host: str, port: int) -> uvicorn.Config:
    """uvicorn's settings: no proxy headers believed here (the gate decides which proxy to trust,
    tuner.access.trusted_proxies; uvicorn's default trusts any X-Forwarded-For from loopback)."""
    return uvicorn.Config(api, host=host, port=port, proxy_headers=False, log_level="warning",
                          timeout_graceful_shutdown=2)


def build_app(home: Path, default_model: str = models.BUNDLED, rng: random.Random | None = None,
              access: Access | None = None) -> Tuner:
    """Compose the studio, the raters' page and their routes over one data root; tests call
    this with a tmp folder. `access` defaults to the environment's (TUNER_OWNER_PASSWORD, TUNER_OWNER)."""
    layout = Layout(home)
    trainer = RunManager(layout.runs, layout.models)
    generator = Generator(layout.models)
    store = Store(layout.ratings_db)
    rng = rng or random.Random()
    access = access or Access.from_env()
    secret = app_secret(layout.root)  # never in a page: it keys the anti-forgery tokens and the sign-in cookie
    if access.sessions.path is None:  # the owner's sessions outlive a restart, hashed, in the data root
        access.sessions = Sessions(layout.root / "owner_sessions.db")
    access.csrf_key = hashlib.sha256(f"csrf:{secret}".encode()).digest()
    # uploads go to a folder of Tuner's own in the data root, not the machine's shared
    # /tmp/gradio (set before any component is made: each reads it when built)
    ui_access.use_upload_folder(layout.root, older_than=UPLOAD_LIFETIME[1])
    studio = _studio(layout, trainer, generator, store, access, default_model)
    with gr.Blocks(title="Tuner: rate replies", analytics_enabled=False) as raters:
        rater_eval = rate.raters_page()
        raters.load(None, None, rater_eval, js=rate.EVALUATIONS_JS)

    api = FastAPI(title="Tuner", docs_url=None, redoc_url=None, openapi_url=None)
    ui_access.owner_routes(api, access)
    rate.rater_api(api, store, rng)
    ui_access.hf_routes(api, access)  # Hugging Face sign-in, on a Space

    @api.get(ui_access.RATERS_APP, include_in_schema=False)
    def raters_page():  # the link friends get ends in /rate
        return RedirectResponse(ui_access.RATERS_APP + "/", status_code=307)

    head = rate.KEYS_JS + rate.RATE_JS
    # Gradio's queue recomputes a pandas summary of its last 10,000 events after every event
    # (for its /monitoring page); recompute it every 500 events, over 2,000
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "500")
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "2000")
    studio.queue(default_concurrency_limit=4)
    upload_limit = max_upload()
    gr.mount_gradio_app(api, raters, path=ui_access.RATERS_APP, head=head, show_error=True,
                        max_file_size=1, enable_monitoring=False, mcp_server=False, ssr_mode=False)
    gr.mount_gradio_app(api, studio, path="/", auth_dependency=ui_access.owner_user(access),
                        head=head + ui_access.CSRF_JS, css=results.CSS + leaderboard.CSS, show_error=True,
                        max_file_size=upload_limit, enable_monitoring=False, mcp_server=False, ssr_mode=False)
    # Gradio checks that a file an event names (a FileData path) was uploaded only once a Blocks
    # "has launched", which launch() sets and mount_gradio_app does not: without this, a call
    # naming any file on the server (a dataset, the ratings database) is taken as an upload
    studio.has_launched = raters.has_launched = True
    # the gate wraps everything above, outermost (added last)
    tuner = Tuner(api, studio, raters)
    api.add_middleware(_GateFactory(tuner, access, lambda: studio.fns))
    # Hugging Face sign-in (on a Space): its session middleware goes outside the gate, which reads it
    ui_access.hf_session(api, secret)
    return tuner


class _GateFactory:
    """Builds the gate when Starlette builds its middleware stack, and keeps it on the Tuner
    (the tests read its upload bookkeeping)."""

    def __init__(self, tuner: Tuner, access: Access, studio_fns):
        self.tuner, self.access, self.studio_fns = tuner, access, studio_fns

    def __call__(self, app):
        self.tuner.gate = ui_access.Gate(app, self.access, self.studio_fns)
        return self.tuner.gate


def _studio(layout: Layout, trainer: RunManager, generator: Generator, store: Store, access: Access,
            default_model: str) -> gr.Blocks:
    """The owner's studio: every tab. Only the owner reaches it (the gate, and Gradio's auth_dependency)."""
    # uploads (and files handed out for download) older than an hour are deleted every
    # ten minutes; the gate caps what the upload folder may hold meanwhile
    with gr.Blocks(title="Tuner", analytics_enabled=False, delete_cache=UPLOAD_LIFETIME) as demo:
        gr.Markdown("# Tuner\nBuild a dataset, fine-tune with LoRA, then rate base and fine-tuned replies blind.")
        ui_access.owner_bar(access)
        picker, _status, default_picked = widgets.model_picker(layout.models, default_model)
        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset"):
                chooser, (show_dataset, dataset_outputs) = dataset.dataset_tab(
                    layout.datasets, picker, layout.models, generator)
            with gr.Tab("Train", id="train") as train_page:
                modules, estimate = train.train_tab(trainer, layout.datasets, picker, chooser, train_page, store,
                                                    layout.preferences)
            with gr.Tab("Compare", id="compare") as compare_page:
                refresh_compare, load_compare, compare_outputs = compare.compare_tab(trainer, generator, store)
            with gr.Tab("Playground", id="playground") as playground_page:
                refresh_playground, playground_outputs = playground.playground_tab(trainer, generator)
            with gr.Tab("Results", id="results") as results_page:
                show_results, results_eval, results_outputs = results.results_tab(store, trainer, layout.datasets)
            with gr.Tab("Leaderboard", id="leaderboard") as leaderboard_page:
                show_board, board_inputs, board_outputs = leaderboard.leaderboard_tab(store)
            with gr.Tab("Export", id="export"):
                export_runs = export.export_panel(trainer, layout)
        # a page load (or reload, or a second browser) sees what exists now, not
        # what existed when the app was built
        demo.load(default_picked, picker, picker).then(*modules).then(*estimate)
        demo.load(dataset.refresh_datasets_fn(layout.datasets), chooser, chooser).then(
            show_dataset, chooser, dataset_outputs)
        demo.load(load_compare, None, compare_outputs)
        demo.load(*export_runs)
        compare_page.select(refresh_compare, None, compare_outputs)
        playground_page.select(refresh_playground, None, playground_outputs)
        results_page.select(show_results, results_eval, results_outputs, **results.IN_ORDER)
        leaderboard_page.select(show_board, board_inputs, board_outputs)
    return demo


def main() -> None:
    home = data_root()
    model = os.environ.get("TUNER_MODEL", models.BUNDLED)
    start = time.perf_counter()
    if model == models.BUNDLED:
        print("Preparing the bundled model (converted once, then loaded from the cache)…", flush=True)
        try:
            models.resolve(model, Layout(home).models)
        except models.ModelUnavailable as exc:
            print(f"Warning: {exc}", flush=True)
    tuner = build_app(home, model)
    host = os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    print(f"Data root: {home}. Ready in {time.perf_counter() - start:.1f} s: http://{host}:{port} "
          f"(raters: http://{host}:{port}/rate)", flush=True)
    uvicorn.Server(server_config(tuner.api, host, port)).run()


if __name__ == "__main__":
    main()
