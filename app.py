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
import time
from pathlib import Path

from tuner import zerogpu

if zerogpu.enabled():  # a ZeroGPU Space: its package patches torch, so it comes first
    import spaces  # noqa: F401

import gradio as gr  # noqa: E402

from ratings.store import Store
from tuner import models
from tuner.ui import access as ui_access
from tuner.ui import compare, dataset, export, leaderboard, playground, rate, results, train, widgets
from tuner.access import Access, Sessions, app_secret
from tuner.generate import Generator
from tuner.paths import Layout, data_root, max_upload
from tuner.runs import RunManager


UPLOAD_LIFETIME = (600, 3600)  # (every, older than) in seconds: Gradio's delete_cache


def build_app(home: Path, default_model: str = models.BUNDLED, rng: random.Random | None = None,
              access: Access | None = None) -> gr.Blocks:
    """Compose the tabs over one data root; tests call this with a tmp folder.

    `access` defaults to the environment's (TUNER_OWNER_PASSWORD, TUNER_OWNER)."""
    # Gradio's queue recomputes a pandas summary of its last 10,000 events after every
    # event (for its /monitoring page); with the Train tab's timer ticking, that was a
    # fifth of the server's CPU under 25 raters. Recompute it every 500 events, over 2,000.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "500")
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "2000")
    layout = Layout(home)
    trainer = RunManager(layout.runs, layout.models)
    generator = Generator(layout.models)
    store = Store(layout.ratings_db)
    rng = rng or random.Random()
    access = access or Access.from_env()
    secret = app_secret(layout.root)
    if access.sessions.path is None:  # the owner's sessions outlive a restart, hashed, in the data root
        access.sessions = Sessions(layout.root / "owner_sessions.db")
    access.csrf_key = hashlib.sha256(f"csrf:{secret}".encode()).digest()
    limits = rate.RaterLimits()
    # uploads go to a folder of Tuner's own in the data root, not the machine's shared
    # /tmp/gradio (set before any component is made: each reads it when built)
    ui_access.use_upload_folder(layout.root, older_than=UPLOAD_LIFETIME[1])

    # uploads (and files handed out for download) older than an hour are deleted every
    # ten minutes; the gate caps what the upload folder may hold meanwhile
    with gr.Blocks(title="Tuner", analytics_enabled=False, delete_cache=UPLOAD_LIFETIME) as demo:
        gr.Markdown("# Tuner\nBuild a dataset, fine-tune with LoRA, then rate base and fine-tuned replies blind.")
        owner_status = ui_access.owner_bar(access)
        picker, _status, default_picked = widgets.model_picker(layout.models, default_model)
        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset"):
                chooser, (show_dataset, dataset_outputs) = dataset.dataset_tab(
                    layout.datasets, picker, layout.models, generator)
            with gr.Tab("Train", id="train") as train_page:
                modules, estimate = train.train_tab(trainer, layout.datasets, picker, chooser, train_page, store,
                                                    layout.preferences)
            with gr.Tab("Compare", id="compare") as compare_page:
                refresh_compare, load_compare, compare_outputs = compare.compare_tab(trainer, generator, store, rng, secret, limits)
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
        if owner_status:
            demo.load(owner_status[0], None, owner_status[1], api_name="owner_status")
        # the owner's components are built empty (a stranger reads /config); these
        # guarded handlers fill them for the owner
        demo.load(default_picked, picker, picker).then(*modules).then(*estimate)
        demo.load(dataset.refresh_datasets_fn(layout.datasets), chooser, chooser).then(
            show_dataset, chooser, dataset_outputs)
        demo.load(load_compare, None, compare_outputs)
        demo.load(*export_runs)
        compare_page.select(refresh_compare, None, compare_outputs)
        playground_page.select(refresh_playground, None, playground_outputs)
        results_page.select(show_results, results_eval, results_outputs)
        leaderboard_page.select(show_board, board_inputs, board_outputs)
    # The raters' page: a second page on the same server with only the rating
    # view. (A route is not access control: the guard below is.)
    with demo.route("Rate", "/rate", show_in_navbar=False):
        refresh_rater, rater_eval = rate.raters_page(store, rng, secret, limits)
        demo.load(refresh_rater, None, rater_eval, api_name="rater_refresh")
    # Owner-only by default: every handler outside the raters' page checks the
    # request on the server (see tuner/ui/access.py).
    ui_access.guard(demo, access)
    # ...and a gate in front of Gradio's routes refuses other sites' requests, a
    # stranger's owner calls before the queue, and a stranger's uploads.
    # (launch() also gets the page's <head>: the rating keys and the anti-forgery header)
    ui_access.install(demo, access, head=rate.KEYS_JS + ui_access.CSRF_JS, css=results.CSS + leaderboard.CSS)
    return demo


def quiet_queue(demo: gr.Blocks, free: float = 0.02, progress: float = 0.1) -> gr.Blocks:
    """Gradio's queue looks for new events every 1 ms (and for progress every 10 ms) even
    when nothing is queued: 7% of a core on an idle app here, taken from training. Every
    20 ms (100 ms) costs 1.5%, and a queued event starts at most 20 ms later; the raters'
    events skip the queue. (Private attributes: where a Gradio release renames them, nothing
    changes.)"""
    queue = getattr(demo, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = max(queue.sleep_when_free, free)
        queue.progress_update_sleep_when_free = max(getattr(queue, "progress_update_sleep_when_free", 0), progress)
    return demo


def queued(demo: gr.Blocks) -> gr.Blocks:
    """The queue as the app serves it (main() and the tests): 4 events at a time, quiet when idle."""
    return quiet_queue(demo.queue(default_concurrency_limit=4))


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
    demo = build_app(home, model)
    print(f"Data root: {home}. Ready in {time.perf_counter() - start:.1f} s.", flush=True)
    queued(demo).launch(server_name=os.environ.get("GRADIO_SERVER_NAME"), max_file_size=max_upload())


if __name__ == "__main__":
    main()
