"""The Train tab: settings, Start/Stop, the live progress and loss chart, the runs table.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from tuner import data as tdata
from tuner import models, recipes
from tuner.ui import access as ui_access
from tuner.ui.charts import curve_frame, loss_spec, lr_frame, short_label, vega_plot
from tuner.config import METHODS, PRECISIONS, SCHEDULERS, TrainConfig
from tuner.estimate import describe, estimate, module_choices
from tuner.runs import FINISHED, RunBusy, RunManager, RunState, clock, resume_hint, run_label, stopped_at
from tuner.train import check_machine, read_metrics



# The config fields the tab edits, in the order of its inputs.
FIELDS = ["method", "r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora", "target_modules",
          "num_virtual_tokens", "prompt_tuning_init_text", "learning_rate", "num_train_epochs", "max_steps",
          "per_device_train_batch_size", "gradient_accumulation_steps", "warmup_steps", "weight_decay",
          "lr_scheduler_type", "max_seq_length", "seed", "precision", "packing", "validation_fraction",
          "eval_steps", "save_steps", "save_total_limit", "test_fraction", "stratify_by", "neftune_noise_alpha"]


INTS = {"r", "lora_alpha", "num_virtual_tokens", "max_steps", "per_device_train_batch_size",
        "gradient_accumulation_steps", "warmup_steps", "max_seq_length", "seed", "eval_steps", "save_steps",
        "save_total_limit"}


PRESETS = ("attention only", "all linear layers", "custom")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def config_from(model_name: str, dataset: str, values, run_name: str = "") -> TrainConfig:
    settings = dict(zip(FIELDS, values))
    settings["run_name"] = (run_name or "").strip()
    for key in INTS:
        settings[key] = int(settings[key]) if settings[key] is not None else None
    for key in ("lora_dropout", "learning_rate", "num_train_epochs", "weight_decay", "validation_fraction",
                "test_fraction", "neftune_noise_alpha"):
        settings[key] = float(settings[key] or 0)
    settings["target_modules"] = list(settings["target_modules"] or []) or None
    settings["stratify_by"] = (settings["stratify_by"] or "").strip() or None
    return TrainConfig(base_model=model_name, dataset=dataset, **settings)


def values_of(config: dict) -> list:
    defaults = TrainConfig().to_dict()
    values = {name: config.get(name, defaults[name]) for name in FIELDS}
    values["stratify_by"] = values["stratify_by"] or ""
    return [values[name] for name in FIELDS]


def recipe_line(recipe: recipes.Recipe | None, minutes: float | None) -> str:
    if recipe is None:
        return ("No recommended recipe for this dataset: **Suggest settings** derives them from its size, "
                "reply lengths and kind.")
    expected = f" — expected ~{max(1, round(minutes))} min here" if minutes else ""
    return (f"**Recommended for this dataset:** {recipe.describe()}{expected}. {recipe.about} "
            "Nothing changes until you click **Use recommended settings**.")


def trainable_share(trainable: int, total: int) -> str:
    """ "4,608 parameters, 0.0033%": a share too small for two decimals keeps two significant digits."""
    percent = 100 * trainable / total if total else 0.0
    shown = f"{percent:.2f}%" if percent >= 0.1 or percent == 0 else f"{percent:.2g}%"
    return f"{trainable:,} parameters, {shown}"


def runs_frame(manager: RunManager | None) -> pd.DataFrame:
    """The runs table; `None`: its empty frame (the page is built with no owner data)."""
    rows = []
    for run in manager.runs() if manager is not None else []:
        s = run.get("summary") or {}
        c = run.get("config", {})
        # where an unfinished run got to: read from its folder for those rows only (runs()
        # is on every estimate's path, this is not)
        where = stopped_at(Path(run["path"])) if run.get("status") in ("interrupted", "stopped", "failed") else {}
        steps = s.get("global_step", where.get("step") if where.get("step") is not None else "")
        message = run.get("message", "")
        if run.get("status") == "interrupted":
            message = " ".join(filter(None, [message, resume_hint(where)]))
        rows.append([run["run_id"], c.get("run_name", ""), run.get("status", ""), c.get("method", "lora"),
                     Path(c.get("dataset", "")).name,
                     steps, _round(s.get("final_loss")), _round(s.get("best_eval_loss")),
                     trainable_share(s["trainable_params"], s["total_params"]) if s.get("trainable_params") else "",
                     clock(s["train_runtime"]) if s.get("train_runtime") else "", message])
    return pd.DataFrame(rows, columns=["run", "name", "status", "method", "dataset", "steps", "final loss",
                                       "best val loss", "trainable", "time", "message"])


def _round(value, digits: int = 4):
    return "" if value is None else round(value, digits)


def summary_text(run: dict) -> str:
    s = run.get("summary") or {}
    status = run.get("status", "")
    if status in ("failed", "interrupted"):
        return f"**Run {run['run_id']} {status}.** {run.get('message', '')}"
    named = f" ({run['config']['run_name']})" if (run.get("config") or {}).get("run_name") else ""
    parts = [f"**Run {run['run_id']}{named} {status}**"]
    if s.get("train_runtime") is not None:
        parts.append(f"training time {clock(s['train_runtime'])}")
    if s.get("final_loss") is not None:
        parts.append(f"final training loss {s['final_loss']:.4f}")
    if s.get("best_eval_loss") is not None:
        parts.append(f"best validation loss {s['best_eval_loss']:.4f}")
    if s.get("trainable_params") is not None:
        parts.append(f"trained {trainable_share(s['trainable_params'], s['total_params'])} "
                     f"of {s['total_params']:,}")
    text = " · ".join(parts) + "."
    if run.get("message"):
        text += f" {run['message']}"
    return text


SMALL_HELD_OUT = 5  # held-out rows below which runs cannot be told apart on them


def small_split_warning(config: TrainConfig) -> str:
    """A warning when the split leaves too few held-out rows to compare runs on."""
    try:
        rows = tdata.load_jsonl(Path(config.dataset)).rows
        parts = tdata.splits(rows, config.validation_fraction, config.test_fraction, config.seed, config.stratify_by)
    except (OSError, ValueError):
        return ""
    sizes = {name: len(parts[name]) for name in ("train", "validation", "test")}
    few = [f"{sizes[name]} {name}" for name, share in (("validation", config.validation_fraction),
                                                        ("test", config.test_fraction))
           if share > 0 and sizes[name] < SMALL_HELD_OUT]
    if not few:
        return ""
    return (f"\n\n⚠️ The split is {sizes['train']} train / {sizes['validation']} validation / {sizes['test']} test "
            f"rows: {' and '.join(few)} rows are too few to compare runs on (one reply more or less moves a rate by "
            f"{100 // max(1, min(sizes['test'] or 1, sizes['validation'] or 1))} points). Add rows (the Dataset "
            "tab's Expand) or raise the share.")


def progress_html(state) -> str:
    share = state.step / state.max_steps if state.max_steps else 0.0
    return (f'<div id="train-bar" data-step="{state.step}" data-total="{state.max_steps}" '
            f'style="height:10px;background:#eee;border-radius:5px;overflow:hidden">'
            f'<div style="width:{100 * share:.1f}%;height:100%;background:#e8590c"></div></div>')


def train_tab(manager: RunManager, datasets_dir: Path, model_picker: gr.Dropdown, dataset_chooser: gr.Dropdown,
              tab: gr.Tab | None = None):
    d = TrainConfig()
    methods = [m for m in METHODS if m != "qlora" or cuda_available()]
    with gr.Row():
        method = gr.Radio(methods, value=d.method, label="Method", elem_id="train-method", scale=2,
                          info="LoRA trains small low-rank updates; prompt tuning trains only a soft prompt.")
        if not cuda_available():
            gr.Markdown("QLoRA (4-bit base model through bitsandbytes) is not offered: it needs a CUDA GPU, "
                        "and this machine has none. LoRA trains the same adapters in full precision here.")
    with gr.Group(visible=True) as lora_box:
        with gr.Row():
            r = gr.Slider(1, 64, value=d.r, step=1, label="LoRA rank (r)")
            alpha = gr.Slider(1, 128, value=d.lora_alpha, step=1, label="LoRA alpha (lora_alpha)")
            dropout = gr.Slider(0.0, 0.5, value=d.lora_dropout, step=0.01, label="LoRA dropout",
                                info="above 0 regularises, but on a CPU costs ~40% more time a step")
            with gr.Column():
                dora = gr.Checkbox(value=d.use_dora, label="DoRA (use_dora)")
                rslora = gr.Checkbox(value=d.use_rslora, label="rsLoRA (use_rslora)")
        with gr.Row():
            preset = gr.Radio(list(PRESETS), value="attention only", label="Target modules", scale=1)
            targets = gr.CheckboxGroup([], value=[], label="Modules", elem_id="train-targets", scale=3)
    with gr.Group(visible=False) as prompt_box:
        with gr.Row():
            virtual = gr.Slider(1, 100, value=d.num_virtual_tokens, step=1, label="Virtual tokens (num_virtual_tokens)")
            init_text = gr.Textbox(value="", label="Initial text (prompt_tuning_init_text, optional)",
                                   placeholder="e.g. Answer politely and briefly.")
    with gr.Row():
        lr = gr.Number(value=d.learning_rate, label="Learning rate", minimum=0)
        epochs = gr.Slider(1, 20, value=d.num_train_epochs, step=1, label="Epochs")
        max_steps = gr.Number(value=d.max_steps, label="Max steps (-1: use epochs)", precision=0)
        batch = gr.Slider(1, 32, value=d.per_device_train_batch_size, step=1, label="Batch size")
        accum = gr.Slider(1, 16, value=d.gradient_accumulation_steps, step=1, label="Gradient accumulation")
        seq = gr.Slider(32, 2048, value=d.max_seq_length, step=32, label="Max sequence length")
    with gr.Accordion("More settings", open=False):
        with gr.Row():
            warmup = gr.Number(value=d.warmup_steps, label="Warmup steps", precision=0, minimum=0)
            decay = gr.Number(value=d.weight_decay, label="Weight decay", minimum=0)
            scheduler = gr.Dropdown(list(SCHEDULERS), value=d.lr_scheduler_type, label="LR schedule")
            seed = gr.Number(value=d.seed, label="Seed", precision=0)
            precision = gr.Dropdown(list(PRECISIONS), value=d.precision, label="Precision")
            packing = gr.Checkbox(value=d.packing, label="Padding-free packing")
        with gr.Row():
            val_frac = gr.Slider(0.0, 0.4, value=d.validation_fraction, step=0.05, label="Validation share")
            eval_steps = gr.Number(value=d.eval_steps, label="Eval every N steps", precision=0, minimum=1)
            save_steps = gr.Number(value=d.save_steps, label="Checkpoint every N steps", precision=0, minimum=1)
            keep = gr.Number(value=d.save_total_limit, label="Checkpoints kept (save_total_limit)", precision=0,
                             minimum=1)
        with gr.Row():
            test_frac = gr.Slider(0.0, 0.4, value=d.test_fraction, step=0.05, label="Test share (held out for Compare)")
            stratify = gr.Textbox(value="", label="Stratify the split by (a metadata column, optional)",
                                  placeholder="e.g. difficulty", elem_id="train-stratify")
            neftune = gr.Number(value=d.neftune_noise_alpha, label="NEFTune noise (0: off, 5: usual)", minimum=0)
    inputs = [method, r, alpha, dropout, dora, rslora, targets, virtual, init_text, lr, epochs, max_steps, batch,
              accum, warmup, decay, scheduler, seq, seed, precision, packing, val_frac, eval_steps, save_steps, keep,
              test_frac, stratify, neftune]
    assert len(inputs) == len(FIELDS)
    with gr.Row():
        recipe_md = gr.Markdown(elem_id="train-recipe")
        use_recipe = gr.Button("Use recommended settings", elem_id="train-recipe-use", scale=0)
        suggest = gr.Button("Suggest settings", elem_id="train-suggest", scale=0)
    estimate_md = gr.Markdown(elem_id="train-estimate")
    # what Start trains, in words beside it
    what = gr.Markdown(elem_id="train-what")
    with gr.Row():
        # its own picker beside Start: it follows the Dataset tab's choice, and can differ from it
        # (built empty: saved datasets' names are the owner's)
        dataset = gr.Dropdown([], allow_custom_value=True, label="Dataset to train", scale=2,
                              elem_id="train-dataset")
        run_name = gr.Textbox(label="Run name (optional; shown in every table, chart and export)", scale=2,
                              max_length=60, placeholder="e.g. polite r16 lr5e-4", elem_id="train-run-name")
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
    message = gr.Markdown(elem_id="train-message")
    # built empty (a running run's id is the owner's); the timer's first tick fills them
    bar = gr.HTML(progress_html(RunState()), elem_id="train-progress-bar")
    progress = gr.Markdown("", elem_id="train-progress")
    with gr.Row():
        chart = gr.LinePlot(None, x="step", y="loss", color="series", title="Loss",
                            height=280, elem_id="loss-chart", scale=3)
        lr_chart = gr.LinePlot(None, x="step", y="learning rate", title="Learning rate",
                               height=280, elem_id="lr-chart", scale=2)
    summary = gr.Markdown(elem_id="train-summary")

    gr.Markdown("### Runs")
    # built empty (run ids are the owner's); the timer's first tick fills both
    runs = gr.Dataframe(runs_frame(None), interactive=False, elem_id="runs-table")
    with gr.Row():
        picked = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Runs to overlay / act on",
                             elem_id="runs-picked", scale=3)
        resume = gr.Button("Resume", elem_id="run-resume", scale=1)
        load_settings = gr.Button("Load settings", elem_id="run-load", scale=1)
        export = gr.Button("Export config", elem_id="run-export", scale=1)
    with gr.Row():
        exported = gr.File(label="Exported config", interactive=False, elem_id="run-config-file", scale=1)
        imported = gr.File(label="Load a config JSON into the settings", file_types=[".json"],
                           elem_id="run-config-upload", scale=1)

    # Rendered anew for each choice of runs: a LinePlot never draws color series
    # that appear after its first render (see curve_frame)
    @gr.render(inputs=picked)
    def overlay(chosen):
        frames = [curve_frame(read_metrics(Path(run["path"])), short_label(run_label(run)))
                  for run in manager.runs() if run["run_id"] in (chosen or [])]
        frames = [f for f in frames if f is not None]
        if frames:
            # a Vega-Lite spec, drawn anew each time: a re-rendered LinePlot is updated in place,
            # and it never draws series added after its first render (only the first run showed)
            gr.Plot(vega_plot(loss_spec(pd.concat(frames, ignore_index=True), "Loss curves of the chosen runs")),
                    show_label=False, elem_id="runs-overlay")
    timer = gr.Timer(1.0)

    # --- handlers --------------------------------------------------------------------------
    def on_model(model_name, preset_name):
        try:
            source = models.resolve(model_name, manager.models_dir)
            attention, linear = module_choices(source.location)
        except Exception:  # the picker itself explains a bad model
            return gr.update(choices=[], value=[])
        chosen = list(attention) if preset_name != "all linear layers" else list(linear)
        return gr.update(choices=list(linear), value=chosen)

    def on_preset(model_name, preset_name, current):
        if preset_name == "custom":
            return gr.update()
        return on_model(model_name, preset_name)

    def on_method(name):
        return gr.update(visible=name != "prompt_tuning"), gr.update(visible=name == "prompt_tuning")

    def build(model_name, dataset_label, values, run_name: str = "") -> TrainConfig:
        path = tdata.available(datasets_dir).get(dataset_label)
        if path is None:
            raise ValueError(f"There is no dataset {str(dataset_label or '')[:80]!r}: pick one in *Dataset to "
                             "train* (beside Start) or on the Dataset tab." if dataset_label else
                             "Pick a dataset to train first (beside Start, or on the Dataset tab).")
        return config_from(model_name, str(path), values, run_name)

    def on_estimate(model_name, dataset_label, *values):
        try:
            config = build(model_name, dataset_label, values)
            return describe(estimate(config, manager.models_dir, manager.runs())) + small_split_warning(config)
        except (ValueError, TypeError, models.ModelUnavailable) as exc:
            return f"⚠️ {exc}"
        except Exception as exc:  # an estimate must never break the tab
            return f"⚠️ No estimate: {type(exc).__name__}: {exc}"

    def recipe_of(dataset_label):
        path = tdata.available(datasets_dir).get(dataset_label)
        return recipes.for_dataset(path) if path else None

    def on_recipe(model_name, dataset_label):
        """What the dataset's recipe recommends, and how long it would take here: shown, not applied."""
        try:
            recipe = recipe_of(dataset_label)
        except ValueError as exc:
            return f"⚠️ {exc}"
        if recipe is None:
            return recipe_line(None, None) if dataset_label else ""
        try:
            path = tdata.available(datasets_dir)[dataset_label]
            est = estimate(recipe.config(str(path), model_name), manager.models_dir, manager.runs())
            minutes = est["seconds"] / 60
        except Exception:  # an estimate must never break the tab
            minutes = None
        return recipe_line(recipe, minutes)

    def settings_out(message_text: str, values: dict):
        merged = dict(TrainConfig().to_dict(), **values)
        return [message_text, "custom" if values.get("target_modules") else gr.update()] + values_of(merged)

    def on_use_recipe(dataset_label):
        try:
            recipe = recipe_of(dataset_label)
        except ValueError as exc:
            return [f"⚠️ {exc}", gr.update()] + [gr.update()] * len(FIELDS)
        if recipe is None:
            return [recipe_line(None, None), gr.update()] + [gr.update()] * len(FIELDS)
        return settings_out(f"Using the recommended settings: {recipe.describe()}.", recipe.train)

    def on_suggest(model_name, dataset_label):
        path = tdata.available(datasets_dir).get(dataset_label)
        if path is None:
            return ["⚠️ Pick a dataset to train first (beside Start, or on the Dataset tab).",
                    gr.update()] + [gr.update()] * len(FIELDS)
        try:
            rows = tdata.load_jsonl(path).rows
            try:
                linear = list(module_choices(models.resolve(model_name, manager.models_dir).location)[1])
            except Exception:  # an unknown model: the usual Llama-style names
                linear = None
            suggestion = recipes.suggest(rows, linear)
        except ValueError as exc:
            return [f"⚠️ {exc}", gr.update()] + [gr.update()] * len(FIELDS)
        return settings_out(f"**Suggested:** {suggestion.why}", suggestion.train)

    def on_start(model_name, dataset_label, run_name, *values):
        try:
            config = build(model_name, dataset_label, values, run_name)
            check_machine(config)
            models.resolve(model_name, manager.models_dir)  # fail here, not in the thread
            run_id = manager.start(config)
        except (ValueError, TypeError, RunBusy, models.ModelUnavailable) as exc:
            return f"⚠️ {exc}", gr.skip(), gr.skip()
        state = manager.snapshot()  # the new run's line at once, not the last run's until the next tick
        named = f" (**{config.run_name}**)" if config.run_name else ""
        return (f"Started run `{run_id}`{named} on `{Path(config.dataset).name}`." + small_split_warning(config),
                progress_html(state), state.progress_line(time.time()))

    def on_what(model_name, dataset_label, shown_label):
        if not dataset_label:
            return "Pick the dataset Start trains in *Dataset to train*, below (or on the **Dataset** tab)."
        elsewhere = "" if dataset_label == shown_label else f" (the Dataset tab shows **{shown_label}**)"
        return f"Start trains **{dataset_label}**{elsewhere} on **{model_name or '?'}**."

    def follow(shown_label, current=None):
        """The datasets as they are now; the Dataset tab's choice, or else the one kept here."""
        names = list(tdata.available(datasets_dir))
        value = shown_label if shown_label in names else (current if current in names else None)
        return gr.update(choices=names, value=value)

    def on_stop():
        return "Stopping after the current step…" if manager.stop() else "No run is in progress."

    def on_resume(chosen):
        if not chosen or len(chosen) != 1:
            return "⚠️ Choose exactly one run to resume."
        try:
            manager.resume(chosen[0])
        except (ValueError, RunBusy) as exc:
            return f"⚠️ {exc}"
        return f"Resuming run `{chosen[0]}` from its last checkpoint."

    def on_load(chosen):
        if not chosen or len(chosen) != 1:
            return ["⚠️ Choose exactly one run to load its settings."] + [gr.update()] * len(FIELDS)
        try:
            run = manager.get(chosen[0])
        except ValueError as exc:
            return [f"⚠️ {exc}"] + [gr.update()] * len(FIELDS)
        if run is None:
            return [f"⚠️ There is no run `{chosen[0]}`."] + [gr.update()] * len(FIELDS)
        return [f"Loaded the settings of `{chosen[0]}`."] + values_of(run["config"])

    def on_import(file):
        if file is None:
            return [gr.update()] * (len(FIELDS) + 1)
        path = Path(file if isinstance(file, str) else file.name)
        try:
            text = path.read_text(encoding="utf-8")
            ui_access.forget_upload(path)  # read once: the upload folder keeps nothing of it
            values = json.loads(text)
            config = values.get("config", values) if isinstance(values, dict) else None
            if not isinstance(config, dict):
                raise ValueError("expected a JSON object of settings")
            known = {k: v for k, v in config.items() if k not in ("base_model", "dataset", "output_dir")}
            TrainConfig.from_dict(known)
        except (OSError, ValueError, TypeError, json.JSONDecodeError) as exc:
            return [f"⚠️ {path.name}: {exc}"] + [gr.update()] * len(FIELDS)
        return [f"Loaded the settings from `{path.name}`."] + values_of(config)

    def on_export(chosen):
        if not chosen or len(chosen) != 1:
            return "⚠️ Choose exactly one run to export its config.", None
        try:
            run = manager.get(chosen[0])
        except ValueError as exc:
            return f"⚠️ {exc}", None
        if run is None:
            return f"⚠️ There is no run `{chosen[0]}`.", None
        out = Path(tempfile.mkdtemp(prefix="tuner-config-")) / f"{chosen[0]}.json"
        out.write_text(json.dumps(run["config"], indent=2) + "\n", encoding="utf-8")
        return f"Exported the config of `{chosen[0]}`.", str(out)

    def on_tick(seen_status, seen_rows):
        state = manager.snapshot()
        changed = state.status != seen_status
        grew = len(state.rows) != seen_rows
        line = state.progress_line(time.time()) if state.status != "idle" else \
            (manager.idle_line() if changed else gr.skip())
        outputs = [progress_html(state), line,
                   curve_frame(state.rows, validation=state.validation) if grew else gr.skip(), lr_frame(state.rows) if grew else gr.skip()]
        if changed:
            run = manager.get(state.run_id) if state.run_id else None
            ended = run is not None and state.status not in ("starting", "running")
            outputs += [runs_frame(manager), gr.update(choices=[r["run_id"] for r in manager.runs()]),
                        summary_text(run) if ended else "",
                        # "Stopping…" (or "Started…") gives way to how the run ended
                        f"Run `{run['run_id']}` {run['status']}." if ended and seen_status is not None else gr.skip()]
        else:
            outputs += [gr.skip(), gr.skip(), gr.skip(), gr.skip()]
        return outputs + [state.status, len(state.rows)]

    seen_status = gr.State(None)
    seen_rows = gr.State(-1)
    model_picker.change(on_model, [model_picker, preset], targets)
    preset.input(on_preset, [model_picker, preset, targets], targets)
    targets.input(lambda: "custom", None, preset)
    method.change(on_method, method, [lora_box, prompt_box])
    dataset_chooser.change(follow, [dataset_chooser, dataset], dataset)
    if tab is not None:  # a version saved meanwhile is offered when the tab is opened
        tab.select(lambda here: follow(here, here), dataset, dataset)
    for component in [model_picker, dataset] + inputs:
        component.change(on_estimate, [model_picker, dataset] + inputs, estimate_md)
    for component in (model_picker, dataset):
        component.change(on_recipe, [model_picker, dataset], recipe_md)
    use_recipe.click(on_use_recipe, dataset, [message, preset] + inputs)
    suggest.click(on_suggest, [model_picker, dataset], [message, preset] + inputs)
    start.click(on_start, [model_picker, dataset, run_name] + inputs, [message, bar, progress])
    for component in (model_picker, dataset, dataset_chooser):
        component.change(on_what, [model_picker, dataset, dataset_chooser], what)
    stop.click(on_stop, None, message)
    resume.click(on_resume, picked, message)
    load_settings.click(on_load, picked, [message] + inputs)
    imported.upload(on_import, imported, [message] + inputs)
    export.click(on_export, picked, [message, exported])
    timer.tick(on_tick, [seen_status, seen_rows],
               [bar, progress, chart, lr_chart, runs, picked, summary, message, seen_status, seen_rows])
    return (on_model, [model_picker, preset], targets), (on_estimate, [model_picker, dataset] + inputs,
                                                          estimate_md)


def finished_runs(manager: RunManager) -> list[tuple[str, str]]:
    """(label, run_id) of runs whose adapter can be compared."""
    out = []
    for run in manager.runs():
        if run.get("status") in FINISHED and (Path(run["path"]) / "adapter").is_dir():
            loss = (run.get("summary") or {}).get("final_loss")
            name = run_label(run)
            shown = f"{name} · {run['run_id']}" if name != run["run_id"] else name
            label = f"{shown} ({run['status']}, loss {loss:.3f})" if loss is not None else shown
            out.append((label, run["run_id"]))
    return out
