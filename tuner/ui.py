"""The model picker and the Dataset tab. Only UI code imports gradio."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from tuner import data as tdata
from tuner import models, ui_dataset


def model_picker(models_dir: Path, default: str):
    """The base-model picker above the tabs; a bad choice is explained, never fatal.

    Returns (picker, status, load handler): a default that is a folder on this
    server is not written into the page (a stranger would read its path there);
    the page's load handler, guarded like every owner handler, fills it in."""
    public = models.choices(models_dir) + [models.EXAMPLE_HUB_ID]
    shown = default if default in public or not Path(str(default)).expanduser().exists() else None
    picker = gr.Dropdown(
        choices=public,
        value=shown, allow_custom_value=True, label="Base model",
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

    def default_model(current):
        return gr.update(value=current or default)

    return picker, status, default_model


# --- Dataset tab ------------------------------------------------------------------
def dataset_tab(datasets_dir: Path, model_picker=None, models_dir: Path | None = None, generator=None):
    """The Dataset tab (built in tuner.ui_dataset). Returns the dataset dropdown
    (its value is a label of `tdata.available(datasets_dir)`, which the Train
    tab reads) and the (handler, outputs) that fill the tab on page load.
    `model_picker` gives the tokenizer for token lengths and the model for
    paraphrases; `generator` (a tuner.generate.Generator) is shared with Compare."""
    return ui_dataset.dataset_tab(datasets_dir, model_picker, models_dir, generator)


def refresh_datasets_fn(datasets_dir: Path):
    """A load handler: the chooser's choices as they are now, keeping its value
    (the chooser is built empty: saved datasets' names are the owner's)."""

    def refresh(current):
        names = list(tdata.available(datasets_dir))
        if current not in names:
            default = ui_dataset.DEFAULT_DATASET
            current = default if default in names else (names[0] if names else None)
        return gr.update(choices=names, value=current)

    return refresh
