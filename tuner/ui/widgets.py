"""Widgets shared above or across the tabs: the base-model picker."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from tuner import models


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
