"""The Export area: a finished run's adapter as a zip, merged into its base, ready for
Ollama, or pushed to the Hugging Face Hub. Only UI code imports gradio; the work is
in tuner.export."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from tuner import export, models
from tuner.ui.train import finished_runs

KINDS = {  # button label → what it makes
    "adapter": "Download adapter (.zip)",
    "merged": "Merge into base model",
    "ollama": "Export for Ollama",
}


def _download(archive: Path | None, root: Path) -> str | None:
    """Only files directly in the data root's exports folder are handed to gr.File, and
    only as a link in a folder of random name in the downloads folder, which the app
    serves as is (export_panel): Gradio then makes no copy of it in its upload folder,
    where a large export would fill the owner's upload allowance, and the data root never
    has to be an allowed path (which would let anyone fetch any export, or the ratings
    database, by name)."""
    return None if archive is None else str(export.hand_out(archive, root))


def _explained(fn):
    """Every failure becomes a gr.Error saying what went wrong."""
    try:
        return fn()
    except export.ExportError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    except models.ModelUnavailable as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    except OSError as exc:  # disk full, permissions: the export was not kept (built aside, never renamed in)
        raise gr.Error(print_exception=False, message=f"Export failed writing to disk, nothing was kept: "
                       f"{exc.strerror or exc} "
                       f"({exc.filename or ''}).") from None


def make_export(kind: str, run_id: str | None, runs_dir: Path, models_dir: Path, root: Path,
                progress=None) -> tuple[str, str | None]:
    """The zip / merge / Ollama buttons' one handler: (status Markdown, file for gr.File)."""
    if progress is not None:
        progress(0, desc={"adapter": "Packing the adapter…", "merged": "Merging (loads the base model)…",
                          "ollama": "Merging and writing the Ollama export…"}[kind])

    def work():
        if kind == "adapter":
            result = export.export_adapter(runs_dir, root, run_id)
            text = f"Adapter of **{run_id}** packed: `{result.zip.name}` (folder `{result.folder}`)."
        elif kind == "merged":
            result = export.merge(runs_dir, models_dir, root, run_id)
            text = f"Merged model written to `{result.folder}`. {result.note}"
        else:
            result = export.export_ollama(runs_dir, models_dir, root, run_id)
            text = f"Ollama export written to `{result.folder}`: {result.note}"
        return text, _download(result.zip, root)

    return _explained(work)


def push_export(run_id: str | None, what: str, repo_id: str, token: str, private: bool, runs_dir: Path,
                models_dir: Path, root: Path, uploader=export.hf_upload) -> str:
    what = "merged" if str(what).startswith("merged") else "adapter"
    url = _explained(lambda: export.push(runs_dir, models_dir, root, run_id, what, repo_id, token,
                                         private=bool(private), uploader=uploader))
    return f"Pushed the {'merged model' if what == 'merged' else 'adapter'} of **{run_id}** to {url}" + \
        (" (private)." if private else ".")


def export_panel(trainer, layout):
    """Build the Export area inside the current Blocks context.
    `trainer` is the app's tuner.runs.RunManager, `layout` its tuner.paths.Layout.
    Returns (handler, input, output) for the page's load event: the run picker is
    built empty (run ids are the owner's) and filled by it."""
    runs_dir, models_dir, root = Path(trainer.runs_dir), Path(trainer.models_dir), Path(layout.root)
    # the links handed out are served where they are (no copy in Gradio's upload folder)
    gr.set_static_paths([export.downloads_dir(root)])
    gr.Markdown("Export a finished run: its adapter as a zip, the adapter merged into the base model, "
                "a folder ready for `ollama create`, or a push to the Hugging Face Hub. Files are written "
                f"to the `{export.EXPORTS}` folder of the data root.")
    with gr.Row():
        run = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="Finished run",
                          elem_id="export-run", scale=4)
        refresh = gr.Button("Refresh runs", elem_id="export-refresh", scale=1)
    with gr.Row():
        buttons = {kind: gr.Button(label, elem_id=f"export-{kind}") for kind, label in KINDS.items()}
    with gr.Group():
        with gr.Row():
            repo = gr.Textbox(label="Hub repo id", placeholder="your-name/my-tuned-model", elem_id="export-repo")
            token = gr.Textbox(label="Hugging Face token (write access; not stored)", type="password",
                               elem_id="export-token")
        with gr.Row():
            what = gr.Radio(["adapter", "merged model"], value="adapter", label="Push", elem_id="export-what")
            private = gr.Checkbox(value=True, label="Private repository", elem_id="export-private")
            push_button = gr.Button("Push to Hub", elem_id="export-push")
    status = gr.Markdown(elem_id="export-status")
    download = gr.File(label="Download", interactive=False, elem_id="export-file")

    def choices(current):
        # labelled as Compare's and the Playground's run pickers label them: the name beside the id
        runs = finished_runs(trainer)
        ids = [run_id for _, run_id in runs]
        return gr.update(choices=runs, value=current if current in ids else None)

    refresh.click(choices, run, run, api_name=False)
    run.focus(choices, run, run, api_name=False)
    # an expected failure is said in the status line (the file box stays empty, not "Error",
    # and the server log gets no traceback for it)
    def handler_for(kind):
        def handler(run_id, progress=gr.Progress()):
            try:
                return make_export(kind, run_id, runs_dir, models_dir, root, progress)
            except gr.Error as exc:
                return f"⚠️ {exc.message}", None
        return handler

    def on_push(run_id, what_, repo_id, token_, private_):
        try:
            return push_export(run_id, what_, repo_id, token_, private_, runs_dir, models_dir, root)
        except gr.Error as exc:
            return f"⚠️ {exc.message}"

    for kind, button in buttons.items():
        button.click(handler_for(kind), run, [status, download], api_name=f"export_{kind}",
                     concurrency_limit=1, concurrency_id="export")
    push_button.click(on_push, [run, what, repo, token, private], status, api_name="push_to_hub",
                      concurrency_limit=1, concurrency_id="export")
    return choices, run, run
