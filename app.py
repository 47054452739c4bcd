"""Tuner: fine-tune a small chat model in the browser, then prove it got better.

    python app.py            # serves on http://localhost:7860 (GRADIO_SERVER_PORT honoured)

Environment: TUNER_HOME (data root), TUNER_MODEL (the model picked at start).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import gradio as gr

from ratings import ui as ratings_ui
from ratings.store import Store
from tuner import models
from tuner import ui as tuner_ui
from tuner import ui_train
from tuner.generate import Generator
from tuner.paths import Layout, data_root
from tuner.runs import RunManager


def build_app(home: Path, default_model: str = models.BUNDLED, rng: random.Random | None = None) -> gr.Blocks:
    """Compose the tabs over one data root; tests call this with a tmp folder."""
    layout = Layout(home)
    trainer = RunManager(layout.runs, layout.models)
    generator = Generator(layout.models)
    store = Store(layout.ratings_db)
    rng = rng or random.Random()

    with gr.Blocks(title="Tuner", analytics_enabled=False, head=ratings_ui.KEYS_JS) as demo:
        gr.Markdown("# Tuner\nBuild a dataset, fine-tune with LoRA, then rate base and fine-tuned replies blind.")
        picker, _status = tuner_ui.model_picker(layout.models, default_model)
        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset"):
                chooser, (show_dataset, dataset_outputs) = tuner_ui.dataset_tab(layout.datasets, picker, layout.models, generator)
            with gr.Tab("Train", id="train"):
                modules, estimate = ui_train.train_tab(trainer, layout.datasets, picker, chooser)
            with gr.Tab("Compare", id="compare") as compare:
                refresh_compare, compare_outputs = ratings_ui.compare_tab(trainer, generator, store, rng)
            with gr.Tab("Playground", id="playground") as playground:
                refresh_playground, playground_outputs = ratings_ui.playground_tab(trainer, generator)
            with gr.Tab("Results", id="results") as results:
                show_results, results_eval, results_outputs = ratings_ui.results_tab(store, trainer)
        # a page load (or reload, or a second browser) sees what exists now, not
        # what existed when the app was built
        demo.load(tuner_ui.refresh_datasets_fn(layout.datasets), chooser, chooser)
        demo.load(show_dataset, chooser, dataset_outputs)
        demo.load(*modules)
        demo.load(*estimate)
        demo.load(refresh_compare, None, compare_outputs)
        compare.select(refresh_compare, None, compare_outputs)
        playground.select(refresh_playground, None, playground_outputs)
        results.select(show_results, results_eval, results_outputs)
    # The raters' page: a second page on the same server with only the rating
    # view. (A route is not access control: owner-only checks live in handlers.)
    with demo.route("Rate", "/rate", show_in_navbar=False):
        refresh_rater, rater_eval = ratings_ui.raters_page(store, rng)
        demo.load(refresh_rater, None, rater_eval)
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
    demo = build_app(home, model)
    print(f"Data root: {home}. Ready in {time.perf_counter() - start:.1f} s.", flush=True)
    demo.queue(default_concurrency_limit=4).launch(server_name=os.environ.get("GRADIO_SERVER_NAME"))


if __name__ == "__main__":
    main()
