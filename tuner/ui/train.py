"""The Train tab: settings, Start/Stop, the live progress and loss chart, the runs table.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from tuner import data as tdata
from tuner import models, recipes, zerogpu
from tuner.ui import access as ui_access
from tuner.ui.charts import chart as drawn, curve_frame, line_spec, loss_spec, lr_frame, reward_frame, short_label, \
    vega_plot
from tuner.config import LEARNING_RATES, LORA_LEARNING_RATE, METHODS, PREFERENCE_METHODS, RUN_NAME_MAX, \
    TrainConfig, default_learning_rate
from tuner.estimate import describe, estimate, module_choices, suggest as suggest_settings
from tuner.records import RESUMABLE, is_finished, read_metrics, run_label, stopped_at
from tuner.runs import RunBusy, RunManager, RunState, clock, resume_hint
from tuner.train import check_machine
from tuner.ui.preference import preference_config, preference_section
from tuner.ui.train_settings import FIELDS, INTS, SPEC, config_from, values_of


PRESETS = ("attention only", "all linear layers", "custom")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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
        where = stopped_at(Path(run["path"])) if run.get("status") in RESUMABLE else {}
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


# shown under the settings whose cost the label does not tell; the others' help stays in the config
SHOWN_HELP = {"method", "lora_dropout", "rpo_alpha", "ld_alpha"}
# the tab's own look of some inputs: the ids the browser tests find them by, widths, examples
LOOK = {"method": dict(elem_id="train-method", scale=2),
        "target_modules": dict(elem_id="train-targets", scale=3),
        "prompt_tuning_init_text": dict(placeholder="e.g. Answer politely and briefly."),
        "stratify_by": dict(placeholder="e.g. difficulty", elem_id="train-stratify")}


def setting_input(name: str, **override):
    """The input of one TrainConfig setting, from its metadata: label, widget, range, default."""
    spec = SPEC[name].metadata
    kind = spec["widget"]
    default = TrainConfig().to_dict()[name]  # as resolved (the learning rate by the method)
    options = dict(label=spec["label"], **LOOK.get(name, {}), **override)
    if name in SHOWN_HELP:
        options["info"] = spec["help"]
    if kind == "slider":
        low, high, step = spec["reach"]
        return gr.Slider(low, high, value=default, step=step, **options)
    if kind == "number":
        # the lower bound only: the arrows stop there, and past the upper one the config's check
        # names the setting (gradio's own out-of-range error does not)
        lowest = spec.get("at_least", spec.get("above"))
        return gr.Number(value=default, minimum=lowest, precision=0 if name in INTS else None, **options)
    if kind == "checkbox":
        return gr.Checkbox(value=default, **options)
    if kind in ("radio", "dropdown"):
        choices = list(options.pop("choices", spec["choices"]))
        return (gr.Radio if kind == "radio" else gr.Dropdown)(choices, value=default, **options)
    if kind == "text":
        return gr.Textbox(value=default or "", **options)
    if kind == "modules":  # its choices are the model's layers, filled when a model is picked
        return gr.CheckboxGroup([], value=[], **options)
    raise ValueError(f"{name}: no input for the widget {kind!r}")


@dataclass
class TrainTab:
    """What the tab's sections share: the runs and datasets, the pickers beside the tab, and
    the components one section builds and another's handlers read or fill."""
    manager: RunManager
    datasets_dir: Path
    model_picker: gr.Dropdown
    dataset_chooser: gr.Dropdown  # the Dataset tab's
    inputs: dict = field(default_factory=dict)  # FIELDS' inputs by name, filled by the settings sections
    preset: gr.Radio | None = None  # the target-module preset, beside the modules
    dataset: gr.Dropdown | None = None  # "Dataset to train", beside Start
    message: gr.Markdown | None = None  # every action's answer
    bar: gr.HTML | None = None  # the running run's progress bar
    progress: gr.Markdown | None = None  # its line: step, elapsed, remaining, speed
    runs: gr.Dataframe | None = None  # the runs table
    picked: gr.Dropdown | None = None  # the runs chosen to overlay or act on
    # (handler, inputs, outputs) app.py runs once the page has picked its model
    refresh_targets: tuple | None = None
    refresh_estimate: tuple | None = None
    # events that read or fill a later section's components, wired once the whole tab is built
    later: list = field(default_factory=list)
    store: object | None = None  # ratings.store.Store: the evaluations a preference run learns from
    preferences_dir: Path | None = None  # where the preference data built for a run is written
    preference: object | None = None  # tuner.ui.preference.PreferencePicks, shown for DPO and KTO

    @property
    def settings(self) -> list:
        return [self.inputs[name] for name in FIELDS]

    def add(self, *names: str, **override):
        for name in names:
            self.inputs[name] = setting_input(name, **override)

    def filled(self, values: dict) -> dict:
        """The settings' inputs set to `values` (the defaults for what it leaves out)."""
        return dict(zip(self.settings, values_of(values)))

    def build(self, model_name, dataset_label, values, run_name: str = "") -> TrainConfig:
        path = tdata.available(self.datasets_dir).get(dataset_label)
        if path is None:
            raise ValueError(f"There is no dataset {str(dataset_label or '')[:80]!r}: pick one in *Dataset to "
                             "train* (beside Start) or on the Dataset tab." if dataset_label else
                             "Pick a dataset to train first (beside Start, or on the Dataset tab).")
        return config_from(model_name, str(path), values, run_name)


def targets_offered(ui: TrainTab, models_dir: Path, model_name, values: dict) -> dict:
    """The target-module box set to `values`' modules, offered as choices too: before the
    model's layers are read (a first start converts the bundled model) the box had none,
    and Gradio then refused every later event of the tab."""
    wanted = values.get("target_modules")
    if not wanted:
        return {}
    return {ui.inputs["target_modules"]: gr.update(choices=target_choices(models_dir, model_name, wanted),
                                                   value=list(wanted))}


def target_choices(models_dir: Path, model_name, wanted) -> list[str]:
    """The target-module choices to offer with `wanted` chosen: the model's linear layers
    where they can be read, with every wanted name among them."""
    try:
        linear = list(module_choices(models.resolve(model_name, models_dir).location)[1]) if model_name else []
    except Exception:  # the model picker explains a model that cannot be read
        linear = []
    return list(dict.fromkeys([*linear, *wanted]))


def method_section(ui: TrainTab):
    """Method, then LoRA's settings or prompt tuning's, whichever the method trains."""
    methods = [m for m in METHODS if m != "qlora" or cuda_available()]
    with gr.Row():
        ui.add("method", choices=methods)
        if not cuda_available():
            gr.Markdown("QLoRA (4-bit base model through bitsandbytes) is not offered: it needs a CUDA GPU, "
                        "and this machine has none. LoRA trains the same adapters in full precision here.")
    with gr.Group(visible=True) as lora_box:
        with gr.Row():
            ui.add("r", "lora_alpha", "lora_dropout")
            with gr.Column():
                ui.add("use_dora", "use_rslora")
        with gr.Row():
            ui.preset = gr.Radio(list(PRESETS), value="attention only", label="Target modules", scale=1)
            ui.add("target_modules")
    with gr.Group(visible=False) as prompt_box:
        with gr.Row():
            ui.add("num_virtual_tokens", "prompt_tuning_init_text")
    targets, method = ui.inputs["target_modules"], ui.inputs["method"]

    def on_model(model_name, preset_name):
        try:
            source = models.resolve(model_name, ui.manager.models_dir)
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
        return {lora_box: gr.update(visible=name != "prompt_tuning"),
                prompt_box: gr.update(visible=name == "prompt_tuning")}

    ui.model_picker.change(on_model, [ui.model_picker, ui.preset], targets)
    ui.preset.input(on_preset, [ui.model_picker, ui.preset, targets], targets)
    targets.input(lambda: "custom", None, ui.preset)
    method.change(on_method, method, [lora_box, prompt_box])
    ui.refresh_targets = (on_model, [ui.model_picker, ui.preset], targets)
    # a rate left at another method's default follows the method picked by hand (not one loaded
    # with a run's settings): prompt tuning's is far above LoRA's
    ui.later.append(lambda: method.input(rate_for_method, [method, ui.inputs["learning_rate"]],
                                         ui.inputs["learning_rate"]))


def rate_for_method(method: str, rate):
    """The learning rate once `method` is picked: its default where `rate` was another method's."""
    defaults = {LORA_LEARNING_RATE, *LEARNING_RATES.values()}
    return default_learning_rate(method) if rate in defaults or rate is None else gr.update()


def preference_part(ui: TrainTab, tab: gr.Tab | None):
    """DPO and KTO's part (tuner.ui.preference) where there is a ratings store; β alone otherwise."""
    if ui.store is None or ui.preferences_dir is None:
        with gr.Group(visible=False):
            for name in ("beta", "ld_alpha", "rpo_alpha"):
                ui.add(name)
        return
    ui.preference = preference_section(ui, ui.store, ui.preferences_dir)
    if tab is not None:  # evaluations and runs made meanwhile are offered when the tab is opened
        tab.select(*ui.preference.refresh)


def optimisation_section(ui: TrainTab):
    """The settings most runs change: the rate, how long, the batch, the sequence length."""
    with gr.Row():
        ui.add("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
               "gradient_accumulation_steps", "max_seq_length")


def more_settings_section(ui: TrainTab):
    """Settings seldom changed, folded away: schedule, precision, the split, evaluation and checkpoints."""
    with gr.Accordion("More settings", open=False):
        with gr.Row():
            ui.add("warmup_steps", "weight_decay", "lr_scheduler_type", "seed", "precision", "packing")
        with gr.Row():
            ui.add("validation_fraction", "eval_steps", "save_steps", "save_total_limit")
        with gr.Row():
            ui.add("test_fraction", "stratify_by", "neftune_noise_alpha")
    assert set(ui.inputs) == set(FIELDS), set(FIELDS) ^ set(ui.inputs)


def supervised_only(method: str):
    """Shown for supervised methods only: a recipe, Use recommended and Suggest are theirs."""
    return gr.update(visible=method not in PREFERENCE_METHODS)


def recipe_section(ui: TrainTab):
    """The dataset's recommended recipe (offered, applied on request), Suggest settings, the estimate."""
    with gr.Row(elem_id="train-recipe-row") as recipe_row:  # supervised runs' only: hidden for DPO and KTO
        recipe_md = gr.Markdown(elem_id="train-recipe")
        use_recipe = gr.Button("Use recommended settings", elem_id="train-recipe-use", scale=0)
        suggest = gr.Button("Suggest settings", elem_id="train-suggest", scale=0)
    estimate_md = gr.Markdown(elem_id="train-estimate")
    manager, datasets_dir = ui.manager, ui.datasets_dir
    ui.inputs["method"].change(supervised_only, ui.inputs["method"], recipe_row)

    def on_estimate(model_name, dataset_label, *values):
        if dict(zip(FIELDS, values)).get("method") in PREFERENCE_METHODS:
            return ""  # the preference part's line says what the run learns from
        try:
            config = ui.build(model_name, dataset_label, values)
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

    def settings_out(message_text: str, values: dict, model_name=None) -> dict:
        return {ui.message: message_text, ui.preset: "custom" if values.get("target_modules") else gr.update(),
                **ui.filled(values), **targets_offered(ui, manager.models_dir, model_name, values)}

    def on_use_recipe(dataset_label, model_name=None):
        try:
            recipe = recipe_of(dataset_label)
        except ValueError as exc:
            return {ui.message: f"⚠️ {exc}"}
        if recipe is None:
            return {ui.message: recipe_line(None, None)}
        return settings_out(f"Using the recommended settings: {recipe.describe()}.", recipe.train, model_name)

    def on_suggest(model_name, dataset_label, method):
        path = tdata.available(datasets_dir).get(dataset_label)
        if path is None:
            return {ui.message: "⚠️ Pick a dataset to train first (beside Start, or on the Dataset tab)."}
        try:
            suggestion = suggestion_for(manager, path, model_name, method or "lora")
        except ValueError as exc:
            return {ui.message: f"⚠️ {exc}"}
        return settings_out(f"**Suggested:** {suggestion.why}", suggestion.train, model_name)

    def wire():
        picked = [ui.model_picker, ui.dataset]
        for component in picked + ui.settings:
            component.change(on_estimate, picked + ui.settings, estimate_md)
        for component in picked:
            component.change(on_recipe, picked, recipe_md)
        use_recipe.click(on_use_recipe, [ui.dataset, ui.model_picker], [ui.message, ui.preset] + ui.settings)
        suggest.click(on_suggest, picked + [ui.inputs["method"]], [ui.message, ui.preset] + ui.settings)
        ui.refresh_estimate = (on_estimate, picked + ui.settings, estimate_md)

    ui.later.append(wire)


def suggestion_for(manager: RunManager, path: Path, model_name: str, method: str) -> recipes.Suggestion:
    """Suggest settings for the method chosen, its steps counted as the estimate counts them."""
    try:
        linear = list(module_choices(models.resolve(model_name, manager.models_dir).location)[1])
    except Exception:  # an unknown model: the usual Llama-style names
        linear = None
    try:
        return suggest_settings(str(path), model_name, manager.models_dir, method, linear)
    except Exception:  # no tokenizer to count the rows with (the estimate says why): the split's rows
        return recipes.suggest(tdata.load_jsonl(path).rows, linear, method)


def start_section(ui: TrainTab, tab: gr.Tab | None):
    """What Start trains, in words; the dataset it trains and the run's name beside Start and Stop."""
    # what Start trains, in words beside it
    what = gr.Markdown(elem_id="train-what")
    with gr.Row():
        # its own picker beside Start: it follows the Dataset tab's choice, and can differ from it
        # (built empty: saved datasets' names are the owner's)
        ui.dataset = gr.Dropdown([], allow_custom_value=True, label="Dataset to train", scale=2,
                                 elem_id="train-dataset")
        run_name = gr.Textbox(label=SPEC["run_name"].metadata["label"], scale=2, max_length=RUN_NAME_MAX,
                              placeholder="e.g. polite r16 lr5e-4", elem_id="train-run-name")
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
    ui.message = gr.Markdown(elem_id="train-message")
    manager, datasets_dir, dataset, chooser = ui.manager, ui.datasets_dir, ui.dataset, ui.dataset_chooser

    def on_what(model_name, dataset_label, shown_label, method=None):
        if method in PREFERENCE_METHODS:
            return (f"Start trains **{method.upper()}** on the scores of the evaluation picked above, over the "
                    "base model its replies came from.")
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

    chooser.change(follow, [chooser, dataset], dataset)
    if tab is not None:  # a version saved meanwhile is offered when the tab is opened
        tab.select(lambda shown, here: follow(here, shown), [chooser, dataset], dataset)  # this tab's pick first
    method = ui.inputs["method"]
    for component in (ui.model_picker, dataset, chooser, method):
        component.change(on_what, [ui.model_picker, dataset, chooser, method], what)
    stop.click(on_stop, None, ui.message)
    ui.later.append(lambda: wire_start(ui, start, run_name))


def wire_start(ui: TrainTab, start: gr.Button, run_name: gr.Textbox):
    """Start: the run begins, and its line and bar show at once (the progress section's)."""
    manager = ui.manager

    picks = ui.preference.inputs if ui.preference is not None else []

    def on_start(model_name, dataset_label, run_name, *values):
        picked, values = values[:len(picks)], values[len(picks):]
        method = dict(zip(FIELDS, values)).get("method")
        try:
            if method in PREFERENCE_METHODS:
                if ui.preference is None:
                    raise ValueError("Preference tuning needs the ratings database: it is not open here.")
                config = preference_config(ui, ui.store, ui.preferences_dir, picked, method, values, run_name)
            else:
                config = ui.build(model_name, dataset_label, values, run_name)
            check_machine(config)
            models.resolve(config.base_model, manager.models_dir)  # fail here, not in the thread
            gpu_seconds = zerogpu_seconds(config, manager)
            run_id = manager.start(config, gpu_seconds=gpu_seconds)
        except (ValueError, TypeError, RunBusy, models.ModelUnavailable) as exc:
            return {ui.message: f"⚠️ {exc}"}
        state = manager.snapshot()  # the new run's line at once, not the last run's until the next tick
        named = f" (**{config.run_name}**)" if config.run_name else ""
        learns = config.extra.get("preference", {}).get("described")
        on = f"{config.method.upper()} on {learns}" if learns else f"on `{Path(config.dataset).name}`"
        return {ui.message: f"Started run `{run_id}`{named} {on}."
                + ("" if learns else small_split_warning(config))
                + (f"\n\nIt asks ZeroGPU for {gpu_seconds} s. {zerogpu.QUOTA_NOTE}" if gpu_seconds else ""),
                ui.bar: progress_html(state), ui.progress: state.progress_line(time.time())}

    start.click(on_start, [ui.model_picker, ui.dataset, run_name] + picks + ui.settings,
                [ui.message, ui.bar, ui.progress])


def zerogpu_seconds(config: TrainConfig, manager: RunManager) -> int | None:
    """On ZeroGPU: the seconds this run asks for (its estimate with a margin), or a
    ValueError where one call cannot hold it; None elsewhere."""
    if not zerogpu.enabled():
        return None
    seconds = estimate(config, manager.models_dir, manager.runs())["seconds"]
    problem = zerogpu.too_long(seconds)
    if problem:
        raise ValueError(problem)
    return zerogpu.duration_for(seconds)


# The live charts' whole widths in pixels, legend included: side by side in a row, the
# loss and rewards charts take three parts of it and the learning rate two.
CHART_WIDTH, LR_CHART_WIDTH = 420, 280


def progress_section(ui: TrainTab):
    """The running run's bar and line, its loss and learning-rate charts, how it ended; a timer's tick."""
    # built empty (a running run's id is the owner's); the timer's first tick fills them
    ui.bar = gr.HTML(progress_html(RunState()), elem_id="train-progress-bar")
    ui.progress = gr.Markdown("", elem_id="train-progress")
    with gr.Row():
        # Vega-Lite specs drawn by gr.Plot, not LinePlots (tuner/ui/charts.py says why)
        chart = gr.Plot(None, label="Loss", show_label=False, elem_id="loss-chart", scale=3)
        lr_chart = gr.Plot(None, label="Learning rate", show_label=False, elem_id="lr-chart", scale=2)
        # a DPO or KTO run's reward margins and accuracies (TRL's logs), hidden for other runs
        reward_chart = gr.Plot(None, label="Rewards", show_label=False, elem_id="reward-chart", scale=3,
                               visible=False)
    summary = gr.Markdown(elem_id="train-summary")
    seen_status = gr.State(None)
    seen_rows = gr.State(-1)
    manager = ui.manager

    def on_tick(seen_status_now, seen_rows_now):
        state = manager.snapshot()
        changed = state.status != seen_status_now
        out = {ui.bar: progress_html(state), seen_status: state.status, seen_rows: len(state.rows)}
        if state.status != "idle":
            out[ui.progress] = state.progress_line(time.time())
        elif changed:
            out[ui.progress] = manager.idle_line()
        if len(state.rows) != seen_rows_now:
            out[chart] = drawn(loss_spec, curve_frame(state.rows), "Loss", width=CHART_WIDTH, compact=True)
            out[lr_chart] = drawn(line_spec, lr_frame(state.rows), "learning rate", "Learning rate",
                                  width=LR_CHART_WIDTH, compact=True)
            rewards = reward_frame(state.rows)
            out[reward_chart] = gr.update(value=drawn(line_spec, rewards, "value", "Rewards", width=CHART_WIDTH,
                                                      compact=True), visible=rewards is not None)
        if changed:
            run = manager.get(state.run_id) if state.run_id else None
            ended = run is not None and state.status not in ("starting", "running")
            out[ui.runs] = runs_frame(manager)
            out[ui.picked] = gr.update(choices=[r["run_id"] for r in manager.runs()])
            out[summary] = summary_text(run) if ended else ""
            if ended and seen_status_now is not None:  # "Stopping…" (or "Started…") gives way to how it ended
                out[ui.message] = f"Run `{run['run_id']}` {run['status']}."
        return out

    timer = gr.Timer(1.0)
    ui.later.append(lambda: timer.tick(
        on_tick, [seen_status, seen_rows],
        [ui.bar, ui.progress, chart, lr_chart, reward_chart, ui.runs, ui.picked, summary, ui.message, seen_status,
         seen_rows]))


def runs_section(ui: TrainTab):
    """The runs table, the chosen runs' overlaid curves, Resume, and a run's config loaded or exported."""
    gr.Markdown("### Runs")
    # built empty (run ids are the owner's); the timer's first tick fills both
    ui.runs = gr.Dataframe(runs_frame(None), interactive=False, elem_id="runs-table")
    with gr.Row():
        ui.picked = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Runs to overlay / act on",
                                elem_id="runs-picked", scale=3)
        resume = gr.Button("Resume", elem_id="run-resume", scale=1)
        load_settings = gr.Button("Load settings", elem_id="run-load", scale=1)
        export = gr.Button("Export config", elem_id="run-export", scale=1)
    with gr.Row():
        exported = gr.File(label="Exported config", interactive=False, elem_id="run-config-file", scale=1)
        imported = gr.File(label="Load a config JSON into the settings", file_types=[".json"],
                           elem_id="run-config-upload", scale=1)
    manager = ui.manager

    # rendered anew for each choice of runs
    @gr.render(inputs=ui.picked)
    def overlay(chosen):
        frames = [curve_frame(read_metrics(Path(run["path"])), short_label(run_label(run)))
                  for run in manager.runs() if run["run_id"] in (chosen or [])]
        frames = [f for f in frames if f is not None]
        if frames:
            gr.Plot(vega_plot(loss_spec(pd.concat(frames, ignore_index=True), "Loss curves of the chosen runs")),
                    show_label=False, elem_id="runs-overlay")

    def on_resume(chosen):
        if not chosen or len(chosen) != 1:
            return "⚠️ Choose exactly one run to resume."
        try:
            manager.resume(chosen[0])
        except (ValueError, RunBusy) as exc:
            return f"⚠️ {exc}"
        return f"Resuming run `{chosen[0]}` from its last checkpoint."

    resume.click(on_resume, ui.picked, ui.message)
    config_actions(ui, load_settings, export, exported, imported)


def config_actions(ui: TrainTab, load_settings: gr.Button, export: gr.Button, exported: gr.File, imported: gr.File):
    """A run's settings loaded into the inputs or exported as JSON; a config JSON loaded into them."""
    manager = ui.manager

    def one_run(chosen, what: str):
        """The one chosen run's record, or the warning why there is none."""
        if not chosen or len(chosen) != 1:
            return None, f"⚠️ Choose exactly one run to {what}."
        try:
            run = manager.get(chosen[0])
        except ValueError as exc:
            return None, f"⚠️ {exc}"
        return run, "" if run is not None else f"⚠️ There is no run `{chosen[0]}`."

    def on_load(chosen):
        run, warning = one_run(chosen, "load its settings")
        if run is None:
            return {ui.message: warning}
        return {ui.message: f"Loaded the settings of `{chosen[0]}`.", **ui.filled(run["config"])}

    def on_import(file):
        if file is None:
            return {}
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
            return {ui.message: f"⚠️ {path.name}: {exc}"}
        return {ui.message: f"Loaded the settings from `{path.name}`.", **ui.filled(config)}

    def on_export(chosen):
        run, warning = one_run(chosen, "export its config")
        if run is None:
            return {ui.message: warning, exported: None}
        out = Path(tempfile.mkdtemp(prefix="tuner-config-")) / f"{chosen[0]}.json"
        out.write_text(json.dumps(run["config"], indent=2) + "\n", encoding="utf-8")
        return {ui.message: f"Exported the config of `{chosen[0]}`.", exported: str(out)}

    load_settings.click(on_load, ui.picked, [ui.message] + ui.settings)
    imported.upload(on_import, imported, [ui.message] + ui.settings)
    export.click(on_export, ui.picked, [ui.message, exported])


def train_tab(manager: RunManager, datasets_dir: Path, model_picker: gr.Dropdown, dataset_chooser: gr.Dropdown,
              tab: gr.Tab | None = None, store=None, preferences_dir: Path | None = None):
    """The tab, section by section in the page's order; returns the (handler, inputs, outputs) of
    the modules' refresh and the estimate's, for app.py to fire when the page loads."""
    ui = TrainTab(manager, datasets_dir, model_picker, dataset_chooser, store=store, preferences_dir=preferences_dir)
    method_section(ui)
    preference_part(ui, tab)
    optimisation_section(ui)
    more_settings_section(ui)
    recipe_section(ui)
    start_section(ui, tab)
    progress_section(ui)
    runs_section(ui)
    for wire in ui.later:
        wire()
    return ui.refresh_targets, ui.refresh_estimate


def finished_runs(manager: RunManager) -> list[tuple[str, str]]:
    """(label, run_id) of runs whose adapter can be compared."""
    out = []
    for run in manager.runs():
        if is_finished(run):
            loss = (run.get("summary") or {}).get("final_loss")
            name = run_label(run)
            shown = f"{name} · {run['run_id']}" if name != run["run_id"] else name
            label = f"{shown} ({run['status']}, loss {loss:.3f})" if loss is not None else shown
            out.append((label, run["run_id"]))
    return out
