"""The engine's tabs: model picker, Dataset and Train. Only UI code imports gradio."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pandas as pd

from tuner import data as tdata
from tuner import models
from tuner.train import FINISHED, RunBusy, TrainConfig, Trainer

DATASET_COLUMNS = ["user", "assistant", "turns", "metadata"]


def model_picker(models_dir: Path, default: str):
    """The base-model picker above the tabs; a bad choice is explained, never fatal."""
    picker = gr.Dropdown(
        choices=models.choices(models_dir) + [models.EXAMPLE_HUB_ID],
        value=default, allow_custom_value=True, label="Base model",
        info=f"'{models.BUNDLED}' is bundled; a local model folder or a Hugging Face Hub id also works.",
        elem_id="model-picker")
    status = gr.Markdown(elem_id="model-status")

    def check(name):
        try:
            source = models.resolve(name, models_dir)
        except models.ModelUnavailable as exc:
            return f"⚠️ {exc}"
        return f"Model ready: `{source.name}` ({source.kind})."

    picker.change(check, picker, status)
    return picker, status


# --- Dataset tab ------------------------------------------------------------------
def _table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(tdata.preview(rows), columns=DATASET_COLUMNS)


def dataset_tab(datasets_dir: Path):
    """Returns the dataset dropdown (its value names the chosen dataset) and the
    (handler, outputs) that fill the tab, for the page's load event."""
    names = list(tdata.available(datasets_dir))
    with gr.Row():
        chooser = gr.Dropdown(choices=names, value=names[0] if names else None, label="Dataset",
                              elem_id="dataset-chooser", scale=3)
        upload = gr.File(label="Upload a JSONL file of chat examples", file_types=[".jsonl"],
                         elem_id="dataset-upload", scale=2)
    message = gr.Markdown(elem_id="dataset-message")
    table = gr.Dataframe(headers=DATASET_COLUMNS, interactive=False, wrap=True,
                         elem_id="dataset-table", max_height=420)
    gr.Markdown('Format: one JSON object per line, `{"messages": [{"role": "user", "content": ...}, '
                '{"role": "assistant", "content": ...}]}`; extra keys such as `category` are kept.')

    def show(label):
        path = tdata.available(datasets_dir).get(label)
        if path is None:
            return "Pick a dataset or upload one.", _table([])
        result = tdata.load_jsonl(path)
        return f"**{len(result.rows)} rows** in `{path.name}`." + _problems(result), _table(result.rows)

    def receive(file):
        if file is None:
            return gr.update(), gr.update(), gr.update()
        path = Path(file if isinstance(file, str) else file.name)
        try:
            result = tdata.load_jsonl(path)
        except ValueError as exc:
            return gr.update(), f"⚠️ {exc}. Nothing was saved.", gr.update()
        if not result.rows:
            return gr.update(), f"⚠️ No valid rows in `{path.name}`; nothing was saved." + _problems(result), _table([])
        saved = tdata.save_dataset(result.rows, path.name, datasets_dir)
        label = f"saved: {saved.stem}"
        text = f"**{len(result.rows)} rows** imported from `{path.name}` and saved as `{saved.name}`." + _problems(result)
        return gr.update(choices=list(tdata.available(datasets_dir)), value=label), text, _table(result.rows)

    chooser.input(show, chooser, [message, table])  # user picks only: an upload sets its own message
    upload.upload(receive, upload, [chooser, message, table])
    return chooser, (show, [message, table])


def _problems(result: tdata.LoadResult) -> str:
    if not result.problems:
        return ""
    lines = "\n".join(f"- {p}" for p in result.problems[:20])
    more = f"\n- … and {len(result.problems) - 20} more" if len(result.problems) > 20 else ""
    return f"\n\n⚠️ {len(result.problems)} line(s) skipped:\n{lines}{more}"


# --- Train tab --------------------------------------------------------------------
def _loss_frame(rows: list[dict]) -> pd.DataFrame | None:
    points = [{"step": r["step"], "loss": r["loss"], "series": "training loss"} for r in rows if "loss" in r]
    if not points:
        # None, not an empty frame: a LinePlot that starts from an empty frame
        # with a color column fixes an empty color domain and never draws the line
        return None
    return pd.DataFrame(points, columns=["step", "loss", "series"])


def _runs_frame(trainer: Trainer) -> pd.DataFrame:
    rows = []
    for run in trainer.runs():
        summary = run.get("summary") or {}
        rows.append([run["run_id"], run.get("status", ""), Path(run["config"]["dataset"]).name,
                     summary.get("global_step", ""), _round(summary.get("final_loss")),
                     summary.get("train_runtime", ""), run.get("message", "")])
    return pd.DataFrame(rows, columns=["run", "status", "dataset", "steps", "final loss", "seconds", "message"])


def train_tab(trainer: Trainer, datasets_dir: Path, model_picker_: gr.Dropdown, dataset_chooser: gr.Dropdown):
    defaults = TrainConfig()
    with gr.Row():
        r = gr.Slider(1, 64, value=defaults.r, step=1, label="LoRA rank (r)")
        alpha = gr.Slider(1, 128, value=defaults.lora_alpha, step=1, label="LoRA alpha (lora_alpha)")
        dropout = gr.Slider(0.0, 0.5, value=defaults.lora_dropout, step=0.01, label="LoRA dropout")
        lr = gr.Number(value=defaults.learning_rate, label="Learning rate", minimum=0)
    with gr.Row():
        epochs = gr.Slider(1, 20, value=defaults.num_train_epochs, step=1, label="Epochs")
        batch = gr.Slider(1, 32, value=defaults.per_device_train_batch_size, step=1, label="Batch size")
        accum = gr.Slider(1, 16, value=defaults.gradient_accumulation_steps, step=1,
                          label="Gradient accumulation")
        seq = gr.Slider(32, 2048, value=defaults.max_seq_length, step=32, label="Max sequence length")
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
    message = gr.Markdown(elem_id="train-message")
    progress = gr.Markdown(trainer.snapshot().progress_line(), elem_id="train-progress")
    chart = gr.LinePlot(_loss_frame(trainer.snapshot().rows), x="step", y="loss", color="series",
                        title="Loss", height=280, elem_id="loss-chart")
    gr.Markdown("### Runs")
    runs = gr.Dataframe(_runs_frame(trainer), interactive=False, elem_id="runs-table")
    timer = gr.Timer(1.0)

    def on_start(model_name, dataset_label, r_, alpha_, dropout_, lr_, epochs_, batch_, accum_, seq_):
        path = tdata.available(datasets_dir).get(dataset_label)
        if path is None:
            return "⚠️ Pick a dataset in the Dataset tab first."
        try:
            config = TrainConfig(
                base_model=model_name, dataset=str(path), r=int(r_), lora_alpha=int(alpha_),
                lora_dropout=float(dropout_), learning_rate=float(lr_ or 0),
                num_train_epochs=float(epochs_), per_device_train_batch_size=int(batch_),
                gradient_accumulation_steps=int(accum_), max_seq_length=int(seq_))
            models.resolve(model_name, trainer.models_dir)  # fail here, not in the thread
            run_id = trainer.start(config)
        except (ValueError, RunBusy, models.ModelUnavailable) as exc:
            return f"⚠️ {exc}"
        return f"Started run `{run_id}` on `{path.name}`."

    def on_stop():
        return "Stopping after the current step…" if trainer.stop() else "No run is in progress."

    def on_tick(seen_status):
        # the runs list is re-sent only when this browser session sees the status change
        state = trainer.snapshot()
        runs_update = gr.skip() if state.status == seen_status else _runs_frame(trainer)
        return state.progress_line(time.time()), _loss_frame(state.rows), runs_update, state.status

    seen = gr.State(trainer.snapshot().status)
    start.click(on_start, [model_picker_, dataset_chooser, r, alpha, dropout, lr, epochs, batch, accum, seq],
                message).then(_runs_frame_fn(trainer), None, runs)
    stop.click(on_stop, None, message)
    timer.tick(on_tick, seen, [progress, chart, runs, seen])
    return runs


def _round(value, digits: int = 4):
    return "" if value is None else round(value, digits)


def _runs_frame_fn(trainer):
    return lambda: _runs_frame(trainer)


def finished_runs(trainer: Trainer) -> list[tuple[str, str]]:
    """(label, run_id) of runs whose adapter can be compared."""
    out = []
    for run in trainer.runs():
        if run.get("status") in FINISHED and (Path(run["path"]) / "adapter").is_dir():
            loss = (run.get("summary") or {}).get("final_loss")
            label = f"{run['run_id']} ({run['status']}, loss {loss:.3f})" if loss is not None else run["run_id"]
            out.append((label, run["run_id"]))
    return out
