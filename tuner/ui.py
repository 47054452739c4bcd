"""The model picker and the Dataset tab. Only UI code imports gradio."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from tuner import data as tdata
from tuner import models

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
            source = models.resolve(str(name or ""), models_dir)
        except models.ModelUnavailable as exc:
            return f"⚠️ {exc}"
        except Exception as exc:  # e.g. a name too long for the file system
            return f"⚠️ Model '{str(name)[:80]}' cannot be used: {type(exc).__name__}: {exc}"
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
        except (ValueError, OSError) as exc:
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


def refresh_datasets_fn(datasets_dir: Path):
    """A load handler: the chooser's choices as they are now, keeping its value."""

    def refresh(current):
        names = list(tdata.available(datasets_dir))
        return gr.update(choices=names, value=current if current in names else (names[0] if names else None))

    return refresh
