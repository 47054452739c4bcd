"""The Train tab's preference part: which evaluation's scores a DPO or KTO run learns from,
how scores become pairs or examples, which run it continues, and how many that gives,
before Start. The rules are ratings.preferences'; the training, tuner.preference's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr

from ratings import preferences
from ratings.store import Store
from tuner import preference as tpref
from tuner.config import PREFERENCE_METHODS
from tuner.paths import atomic_write_text
from tuner.records import is_finished, run_label
from tuner.ui.rate import eval_choices
from tuner.ui.train_settings import FIELDS, config_from

FROM_BASE = "(a new adapter over the base model)"
CONTINUABLE = ("lora", "qlora", "dpo", "kto")  # runs whose LoRA adapter a preference run can go on from
IN_ORDER = {"concurrency_limit": 1, "concurrency_id": "pref-counts"}  # the counts line and its button


@dataclass
class PreferencePicks:
    """The section's inputs, in the order `inputs` lists them."""

    group: gr.Group
    evaluation: gr.Dropdown
    source: gr.Dropdown
    init_run: gr.Dropdown
    margin: gr.Number
    desirable: gr.Number
    undesirable: gr.Number
    counts: gr.Markdown
    use_rpo: gr.Button  # the length warning's advice (rpo_alpha 10) in one click
    adapter: gr.Markdown  # what a run that continues an adapter trains, in place of LoRA's settings
    refresh: tuple | None = None  # (handler, inputs, outputs): the choices anew, when the tab is opened

    @property
    def inputs(self) -> list:
        return [self.evaluation, self.source, self.init_run, self.margin, self.desirable, self.undesirable]


def continuable_runs(manager) -> list[tuple[str, str]]:
    """(label, run id) of finished runs with a LoRA adapter to continue, and the base first."""
    runs = [(f"{run_label(r)} · {r['config'].get('method', 'lora')}" if run_label(r) != r["run_id"]
             else f"{r['run_id']} · {r['config'].get('method', 'lora')}", r["run_id"])
            for r in manager.runs() if is_finished(r) and r["config"].get("method", "lora") in CONTINUABLE]
    return [(FROM_BASE, FROM_BASE)] + runs


def _eval_id(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return -1


def in_range(component, value) -> bool:
    """Whether a number input's value is one its own minimum and maximum allow (empty is: the default)."""
    if value in (None, ""):
        return True
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
    return (low is None or number >= low) and (high is None or number <= high)


def build_data(store: Store, method: str, evaluation, source, margin, desirable, undesirable):
    """The preference data an evaluation gives, or a ValueError saying what to pick or change."""
    eval_id = _eval_id(evaluation)
    if eval_id is None:
        raise ValueError("Pick the evaluation whose scores the run learns from.")
    if store.evaluation(eval_id) is None:
        raise ValueError(f"There is no evaluation {str(evaluation)[:40]!r}.")
    return preferences.build(store, eval_id, method, source or preferences.RATERS, float(margin or 0),
                             float(desirable or 0), float(undesirable or 0))


def preference_section(ui, store: Store, preferences_dir: Path) -> PreferencePicks:
    """Shown when the method is DPO or KTO; the counts line says before Start whether there is enough."""
    with gr.Group(visible=False) as group:
        gr.Markdown("#### What the preference run learns from\nScores of a rated evaluation become DPO pairs "
                    "(the higher-rated reply to a prompt is chosen when the means differ by the margin) or KTO "
                    "examples (desirable at or above one score, undesirable at or below another); the owner's "
                    "corrections on the Results tab count as chosen answers.")
        with gr.Row():
            evaluation = gr.Dropdown([], label="Evaluation to learn from", allow_custom_value=True, scale=3,
                                     elem_id="pref-eval")
            source = gr.Dropdown([preferences.RATERS], value=preferences.RATERS, label="Scores from", scale=1,
                                 allow_custom_value=True, elem_id="pref-source")
            # None until the method is picked: then the newest finished run (the owner may pick the base)
            init_run = gr.Dropdown([FROM_BASE], value=None, label="Continue from (SFT → DPO)", scale=2,
                                   allow_custom_value=True, elem_id="pref-init")
        with gr.Row():
            margin = gr.Number(preferences.MARGIN, minimum=0, label="DPO: least difference of mean scores",
                               elem_id="pref-margin")
            desirable = gr.Number(preferences.DESIRABLE_AT, minimum=1, maximum=5,
                                  label="KTO: desirable at a mean of at least", elem_id="pref-desirable")
            undesirable = gr.Number(preferences.UNDESIRABLE_AT, minimum=1, maximum=5,
                                    label="KTO: undesirable at a mean of at most", elem_id="pref-undesirable")
            ui.add("beta")
        with gr.Row():
            ui.add("rpo_alpha")
            ui.add("ld_alpha")
        adapter = gr.Markdown(elem_id="pref-adapter")
        counts = gr.Markdown(elem_id="pref-counts")
        use_rpo = gr.Button(f"Set DPO's SFT term on the chosen replies to rpo_alpha {preferences.RPO_REMEDY:g}",
                            visible=False, size="sm", variant="primary", elem_id="pref-use-rpo")
    picks = PreferencePicks(group, evaluation, source, init_run, margin, desirable, undesirable, counts, use_rpo,
                            adapter)
    method = ui.inputs["method"]
    # a run that continues an adapter trains it as it is: LoRA's settings do not apply, and are hidden
    lora_inputs = [ui.inputs[name] for name in tpref.ADAPTER_SETTINGS if name != "target_modules"]
    lora_inputs += [ui.preset, ui.inputs["target_modules"]]

    def on_evaluation(value, current):
        eval_id = _eval_id(value)
        found = preferences.sources(store, eval_id) if eval_id and store.evaluation(eval_id) else [preferences.RATERS]
        return gr.update(choices=found, value=current if current in found else preferences.RATERS)

    def on_adapter(name, run_id):
        """The continued adapter's settings in words, and LoRA's inputs hidden; both back otherwise."""
        run = ui.manager.get(run_id) if name in PREFERENCE_METHODS and run_id and run_id != FROM_BASE else None
        note = ""
        if run is not None:
            try:
                kept = tpref.adapter_settings(Path(run["path"]))
                modules = ", ".join(kept["target_modules"] or []) or "?"
                extras = [w for w, on in (("DoRA", kept["use_dora"]), ("rsLoRA", kept["use_rslora"])) if on]
                note = (f"Continues the adapter of **{run_label(run)}** as it was trained: rank **{kept['r']}**, "
                        f"alpha **{kept['lora_alpha']}**, dropout {kept['lora_dropout']}, modules **{modules}**"
                        + (f", {' and '.join(extras)}" if extras else "") + ". LoRA's settings above do not apply "
                        "to it, and are hidden; pick the base to train a new adapter with them.")
            except (OSError, ValueError, KeyError) as exc:
                note = f"⚠️ The adapter of {run_id} cannot be read: {exc}"
        return [note] + [gr.update(visible=run is None)] * len(lora_inputs)

    picks.refresh = wire_method(ui, picks, store)
    evaluation.change(on_evaluation, [evaluation, source], source)
    for component in (method, init_run):
        component.change(on_adapter, [method, init_run], [adapter] + lora_inputs)
    ui.later.append(lambda: wire_counts(ui, picks, store))
    return picks


def wire_method(ui, picks: PreferencePicks, store: Store) -> tuple:
    """The section shown for DPO and KTO, with its choices anew and each method's own settings;
    (handler, inputs, outputs), which the tab's select runs too."""
    method, group, evaluation, init_run = ui.inputs["method"], picks.group, picks.evaluation, picks.init_run
    # each method's own settings, shown only under it (labelled "DPO: …" and "KTO: …")
    own = {"dpo": [picks.margin, ui.inputs["rpo_alpha"], ui.inputs["ld_alpha"]],
           "kto": [picks.desirable, picks.undesirable]}
    owned = [c for cs in own.values() for c in cs]

    def on_method(name, current_eval, current_run, *values):
        """The section shown or hidden, its choices anew, and each method's own settings shown under it
        alone: a hidden one whose value is out of its range goes back to its default, since Gradio
        refuses the value of every event that reads it, and the owner could no longer see why."""
        shown = name in PREFERENCE_METHODS
        if not shown:
            return {group: gr.update(visible=False)}
        evals = eval_choices(store)
        ids = [i for _, i in evals]
        runs = continuable_runs(ui.manager)
        mine = own.get(name, [])
        return {**{c: gr.update(visible=c in mine, **({} if c in mine or in_range(c, v) else {"value": c.value}))
                   for c, v in zip(owned, values)},
                group: gr.update(visible=True),
                evaluation: gr.update(choices=evals, value=current_eval if current_eval in ids else
                                      (ids[0] if ids else None)),
                init_run: gr.update(choices=runs, value=current_run if current_run in [r for _, r in runs]
                                    else (runs[1][1] if len(runs) > 1 else FROM_BASE))}  # the newest run

    shown_inputs, shown_outputs = [method, evaluation, init_run, *owned], [group, evaluation, init_run, *owned]
    method.change(on_method, shown_inputs, shown_outputs)
    return on_method, shown_inputs, shown_outputs


def wire_counts(ui, picks: PreferencePicks, store: Store):
    """The counts line, once every setting's input exists: what the evaluation gives, what Start's
    split leaves to train on (or why it is too few), and how long the run takes; and the button
    that takes the length warning's advice, shown while it applies."""
    from tuner.estimate import describe

    method = ui.inputs["method"]
    inputs = [method] + picks.inputs + ui.settings

    def on_counts(name, *values):
        """(the counts line, the advice button's update)."""
        hidden = gr.update(visible=False)
        if name not in PREFERENCE_METHODS:
            return "", hidden
        picked, settings = values[:len(picks.inputs)], values[len(picks.inputs):]
        evaluation_, source_, run_, margin_, desirable_, undesirable_ = picked
        try:
            data = build_data(store, name, evaluation_, source_, margin_, desirable_, undesirable_)
        except ValueError as exc:
            return f"⚠️ {exc}", hidden
        judged = " Judge scores are a model's, not the raters': the run is marked as such." \
            if str(source_).startswith(preferences.JUDGE_PREFIX) else ""
        problem = data.problem()
        if problem:
            return f"⚠️ Too few to train on: {problem}{judged}", hidden
        chosen = dict(zip(FIELDS, settings))
        continues = bool(run_) and run_ != FROM_BASE
        try:
            parts, problem = tpref.split_for_run(data.rows, name, float(chosen["validation_fraction"] or 0),
                                                 float(chosen["test_fraction"] or 0), int(chosen["seed"] or 0),
                                                 continues)
        except (TypeError, ValueError) as exc:
            return f"⚠️ {exc}", hidden
        if problem:
            return (f"⚠️ Too few to train on: this evaluation gives {data.describe()}, but {problem} "
                    "(or lower the validation share under *More settings*)." + judged), hidden
        held = len({tpref.prompt_key(r) for name_ in ("validation", "test") for r in parts[name_]})
        text = (f"This evaluation gives **{data.describe()}**. Start holds out {held} of its prompts "
                f"({'validation' if continues else 'validation and test'}): **{preferences.made(name, parts['train'])}"
                f"** to train on.{judged}")
        try:
            config = run_config(ui, store, picked, name, settings)
            text += "\n\n" + describe(tpref.estimate(config, data.rows, ui.manager.models_dir, ui.manager.runs()))
        except (ValueError, TypeError) as exc:
            text += f"\n\n⚠️ {exc}"
        except Exception as exc:  # an estimate must never break the tab
            text += f"\n\n⚠️ No estimate: {type(exc).__name__}: {exc}"
        try:
            rpo_alpha = float(chosen["rpo_alpha"] or 0)
        except (TypeError, ValueError):
            rpo_alpha = 0.0  # the estimate above names the bad value
        # last, right above its button: the pairs that train, not all the evaluation's
        if skew := preferences.length_skew(name, parts["train"], rpo_alpha):
            text += f"\n\n⚠️ Length: {skew}."
        return text, gr.update(visible=preferences.wants_rpo(name, parts["train"], rpo_alpha))

    # one at a time, in the order asked: a count still in flight when the button was clicked (asked with
    # the old weight) would otherwise answer after the click's own and show the button again
    for component in inputs:
        component.change(on_counts, inputs, [picks.counts, picks.use_rpo], **IN_ORDER)

    def take_advice():
        """The SFT term's weight, and the button gone (the weight's change event then drops the advice)."""
        return preferences.RPO_REMEDY, gr.update(visible=False)

    picks.use_rpo.click(take_advice, None, [ui.inputs["rpo_alpha"], picks.use_rpo], **IN_ORDER)


def run_config(ui, store: Store, picks_values, method: str, values, run_name: str = "", dataset: str = ""):
    """The TrainConfig of a DPO or KTO run on the picked evaluation (its data's file aside), with
    the settings of the adapter it continues: what Start runs and run.json records."""
    evaluation, _source, init_run, *_ = picks_values
    base_model = store.evaluation(int(evaluation))["base_model"]
    init_dir = None
    if init_run and init_run != FROM_BASE:
        run = ui.manager.get(init_run)
        if run is None or not is_finished(run):
            raise ValueError(f"There is no finished run {str(init_run)[:80]!r} to continue from.")
        init_dir = str(run["path"])
    config = dataclasses.replace(config_from(base_model, dataset or f"evaluation-{int(evaluation)}.jsonl", values,
                                             run_name), init_adapter=init_dir)
    return tpref.continued(config)


def preference_config(ui, store: Store, preferences_dir: Path, picks_values, method: str, values,
                      run_name: str):
    """The TrainConfig of a DPO or KTO run: its data written to the preferences folder as
    TRL-shaped JSONL, the base model the evaluation's replies came from, the run it continues
    (whose adapter's settings it records), refused when Start's split leaves too few."""
    evaluation, source, init_run, margin, desirable, undesirable = picks_values
    data = build_data(store, method, evaluation, source, margin, desirable, undesirable)
    problem = data.problem()
    if problem:
        raise ValueError(f"Too few to train on: {problem}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = Path(preferences_dir) / f"evaluation-{int(evaluation)}-{method}-{stamp}.jsonl"
    # every setting checked (init_adapter with the rest) before the data is written
    config = run_config(ui, store, picks_values, method, values, run_name, str(path))
    _parts, problem = tpref.split_for_run(data.rows, method, config.validation_fraction, config.test_fraction,
                                          config.seed, config.init_adapter is not None)
    if problem:
        raise ValueError(f"Too few to train on: {problem}")
    rules = {"margin": float(margin or 0)} if method == "dpo" else \
        {"desirable_at": float(desirable or 0), "undesirable_at": float(undesirable or 0)}  # its own only
    config = dataclasses.replace(config, extra={"preference": {
        "evaluation": int(evaluation), "source": data.source, "examples": len(data.rows), **rules,
        "described": data.describe()}})
    atomic_write_text(path, preferences.to_jsonl(data.rows))
    return config
