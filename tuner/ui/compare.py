"""The Compare tab: build an evaluation (prompts, variants, fixed generation settings),
see the automatic checks, then rate it blind like a rater.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ratings import checks as rchecks
from ratings import evalsets, planning, sequential, tables
from ratings.generation import cut_replies, generate_evaluation, open_unless_cut, regenerate_cut, variants_for
from ratings.store import Store
from tuner.generate import BASE, GenSettings, Generator
from tuner.runs import RunManager
from tuner.ui.access import forget_upload
from tuner.ui.rate import REVEAL_CHOICES, eval_choices, picked_evaluation, rating_panel
from tuner.ui.train import finished_runs



@dataclass
class _Generated:
    """What Generate fills: its message, the owner's preview and check, and the rating panel's
    evaluation (the new one, picked)."""
    message: gr.Markdown
    preview: gr.Dataframe
    rate_eval: gr.Dropdown
    check_group: gr.Group
    check_table: gr.Dataframe
    check_paired: gr.Dataframe
    gate: "_Gate"
    edited: gr.State  # the form's fields the owner changed by hand since the last fill (evalsets.FORM_FIELDS)
    plan: gr.Markdown  # what the evaluation shown can detect with the raters the owner will invite
    shown: gr.State  # the evaluation the message is about

    def outputs(self) -> list:
        return [self.message, self.preview, self.rate_eval, self.check_group, self.check_table, self.check_paired,
                *self.gate.outputs(), self.edited, self.plan, self.shown]


@dataclass
class _Gate:
    """Shown instead of opening rating when replies were cut at the cap: the owner
    regenerates them with a larger cap or opens rating anyway."""
    group: gr.Group
    note: gr.Markdown
    regenerate: gr.Button
    open_anyway: gr.Button
    pending: gr.State  # the evaluation waiting for the owner's choice

    def outputs(self) -> list:
        return [self.group, self.note, self.regenerate, self.pending]


def compare_tab(trainer: RunManager, generator: Generator, store: Store):
    gr.Markdown("### 1. Build an evaluation\nGenerate every reply now, with fixed settings, so raters never wait.")
    name, runs, refresh = _title_row()
    source, typed, upload, upload_note = _prompt_sources()
    uploaded = gr.State(None)  # the prompts read from the upload
    sampling, rules, tag, invite, no_code, reveal_choice = _settings()
    checks_box = gr.Textbox(
        lines=3, elem_id="eval-checks",
        label="Automatic checks, one per line, run right after generation (filled from the dataset's recipe)",
        placeholder="starts with: Subject:\ncontains any: sorry, cannot\nnot contains: As an AI\n"
                    "[refusal] max words: 80\nregex: ^Dear \\w+")
    recipe_note = gr.Markdown(elem_id="eval-recipe-note")
    edited, filled_for = gr.State([]), gr.State(None)
    with gr.Row():
        raters = gr.Number(value=DEFAULT_RATERS, minimum=1, maximum=MAX_RATERS, precision=0, step=1, scale=0,
                           min_width=320, label="Raters you will invite", elem_id="eval-raters",
                           info="For the plan: what this evaluation can detect with that many raters")
    generate = gr.Button("Generate replies", variant="primary", elem_id="generate")
    message = gr.Markdown(elem_id="generate-message")
    plan, shown_eval = gr.Markdown(elem_id="eval-plan"), gr.State(None)
    gate = _cut_gate()
    check_group, check_table, check_paired = _check_section()
    preview = gr.Dataframe(interactive=False, wrap=True, elem_id="eval-replies", max_height=360, visible=False)

    gr.Markdown("### 2. Rate blind\nShare the raters' page (**/rate** on this app's address) with friends, "
                "or rate here yourself.")
    rate_eval = rating_panel("rate", public=False)
    coverage = gr.Markdown(elem_id="rate-coverage")  # the owner's view: a model raters have hardly seen
    decided = gr.Markdown(elem_id="rate-decisions")  # and each fine-tuned model's anytime-valid result so far
    rate_eval.change(_coverage(store), rate_eval, coverage, show_progress="hidden")
    rate_eval.change(_decisions(store), rate_eval, decided, show_progress="hidden")
    # friends rate on /rate meanwhile: the notes follow their scores, not only a change of evaluation
    timer = gr.Timer(COVERAGE_EVERY_S)
    timer.tick(_coverage(store), rate_eval, coverage, show_progress="hidden")
    timer.tick(_decisions(store), rate_eval, decided, show_progress="hidden")
    generated = _Generated(message, preview, rate_eval, check_group, check_table, check_paired, gate, edited,
                           plan, shown_eval)

    def on_refresh():
        return gr.update(choices=finished_runs(trainer))

    upload.change(on_upload_preview, upload, [upload_note, uploaded])
    refresh.click(on_refresh, None, runs)
    source.change(lambda kind: (gr.update(visible=kind == "typed prompts"), gr.update(visible=kind == "uploaded file"),
                                gr.update(visible=kind == "uploaded file")),
                  source, [typed, upload, upload_note])
    # `input` is the owner's own typing (a fill from a recipe is a `change` only). The marks and the
    # fill run one at a time, in order (their states are read when each runs): two fills in flight
    # together (the run list's change fires again when its choices are refreshed) both filled,
    # and the later one put the recipe's cap back over the one typed meanwhile
    one_at_a_time = {"concurrency_limit": 1, "concurrency_id": "compare-form"}
    checks_box.input(_mark("checks"), edited, edited, show_progress="hidden", **one_at_a_time)
    for index, key in {0: "cap", **FILLED_SETTINGS}.items():  # the recipe's cap and settings, unless typed over
        sampling[index].input(_mark(key), edited, edited, show_progress="hidden", **one_at_a_time)
    runs.change(_form_filler(trainer), [runs, checks_box, edited, filled_for],
                [checks_box, sampling[0], *(sampling[i] for i in FILLED_SETTINGS), recipe_note, filled_for],
                **one_at_a_time)
    generate.click(_generator(trainer, generator, store, generated),
                   [name, runs, source, typed, uploaded, *sampling, rules, tag, invite, checks_box, no_code,
                    reveal_choice, raters], generated.outputs())
    gate.regenerate.click(_regenerator(trainer, generator, store, generated), [gate.pending, raters],
                          generated.outputs())
    gate.open_anyway.click(_opener(store, generated), [gate.pending, raters], generated.outputs())
    raters.change(_planner(store), [raters, shown_eval, gate.pending, rate_eval], plan, show_progress="hidden")

    def refresh_all(first: bool = False):
        """The runs and evaluations as they are now (the page is built with neither);
        on the page's load, the newest evaluation is picked."""
        evals = eval_choices(store, open_only=True)  # one waiting on the cut gate has no pairs to rate yet
        picked = gr.update(choices=evals, value=evals[0][1]) if first and evals else gr.update(choices=evals)
        return {runs: gr.update(choices=finished_runs(trainer)), rate_eval: picked}

    def load_all():
        """...and an evaluation still waiting for the owner's choice (a reload, another tab) is offered again."""
        # every reply there: one a crash left half-generated is never offered to open
        waiting = next((e["id"] for e in store.evaluations() if not e["open_for_rating"]
                        and len(store.replies(e["id"])) == e["n_prompts"] * e["n_variants"]), None)
        return refresh_all(first=True) | (_gate_shown(store, generated, waiting) if waiting else {})

    return refresh_all, load_all, [runs, rate_eval, *gate.outputs()]


def _title_row():
    with gr.Row():
        name = gr.Textbox(label="Evaluation name", placeholder="e.g. polite assistant, 5 held-out prompts",
                          elem_id="eval-name", scale=2)
        runs = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Fine-tuned runs to compare with the base",
                           elem_id="compare-run", scale=3)
        refresh = gr.Button("↻ Runs", scale=0)
    return name, runs, refresh


def _prompt_sources():
    with gr.Row():
        source = gr.Radio(["held-out prompts of the first run's dataset", "typed prompts", "uploaded file"],
                          value="held-out prompts of the first run's dataset", label="Prompts from",
                          elem_id="eval-source")
    typed = gr.Textbox(lines=5, label="Prompts, one per line (optionally 'task | prompt')", elem_id="compare-prompts",
                       visible=False,
                       placeholder="Email a professor | Ask a professor for feedback on a draft\n"
                                   "Decline a social invitation politely")
    upload = gr.File(label="CSV (prompt, and optional id, task, reference, category) or JSONL",
                     file_types=[".csv", ".jsonl"], elem_id="eval-upload", visible=False)
    upload_note = gr.Markdown(elem_id="eval-upload-note")
    return source, typed, upload, upload_note


def _settings():
    """The generation settings (in on_generate's order of arguments), the keyword rules and what raters get."""
    with gr.Accordion("Generation settings, keyword rules, invite code", open=False):
        with gr.Row():
            defaults = GenSettings()
            sampling = [
                gr.Slider(0, 512, value=0, step=16, elem_id="eval-max-new",
                          label="Max new tokens (0: from the references' lengths, else the training replies')"),
                gr.Slider(0, 1.5, value=defaults.temperature, step=0.05, label="Temperature (0: greedy)"),
                gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top p"),
                gr.Slider(1.0, 2.0, value=defaults.repetition_penalty, step=0.05, label="Repetition penalty"),
                gr.Number(value=defaults.seed, label="Seed", precision=0),
                gr.Slider(1, 32, value=defaults.batch_size, step=1, label="Batch size (rows)")]
        with gr.Row():
            rules = gr.Textbox(lines=3, label="Keyword rules, one per line: 'flag: keyword, keyword priority N'",
                               placeholder="escalate: cancel, angry, lawsuit priority 1", elem_id="eval-rules")
            tag = gr.Checkbox(value=False, label="Add the flags as a tag to the prompt the model sees")
            invite = gr.Textbox(label="Invite code for raters (empty: one is made for you)", elem_id="eval-invite")
            no_code = gr.Checkbox(value=False, label="No invite code: anyone with the link can rate",
                                  elem_id="eval-no-code")
            reveal_choice = gr.Radio(list(REVEAL_CHOICES), value=next(iter(REVEAL_CHOICES)), elem_id="eval-reveal",
                                     label="Raters learn which model wrote each reply")
    return sampling, rules, tag, invite, no_code, reveal_choice


def _cut_gate() -> _Gate:
    with gr.Group(visible=False, elem_id="cut-gate") as group:
        note = gr.Markdown(elem_id="cut-note")
        with gr.Row():
            regenerate = gr.Button("Regenerate with a larger cap", variant="primary", elem_id="cut-regenerate")
            open_anyway = gr.Button("Open rating anyway", elem_id="cut-open")
    return _Gate(group, note, regenerate, open_anyway, gr.State(None))


def _check_section():
    with gr.Group(visible=False) as check_group:
        gr.Markdown("#### Automatic check, before anyone rates\nPass rates with 95% Wilson intervals (means "
                    "with t intervals for F1, ROUGE-L and words), then each fine-tuned model against the base on "
                    "the same prompts (McNemar's exact test for pass/fail, the sign test for F1 and ROUGE-L).")
        check_table = gr.Dataframe(interactive=False, elem_id="check-table")
        check_paired = gr.Dataframe(interactive=False, elem_id="check-paired")
    return check_group, check_table, check_paired


COVERAGE_EVERY_S = 15  # seconds between refreshes of the owner's note on models with few scores
DEFAULT_RATERS, MAX_RATERS = 3, 50  # the raters the owner says they will invite, for the plan


def _coverage(store: Store):
    def on_coverage(eval_id):
        """Each model of the picked evaluation with no or few scores yet (ratings.tables.coverage_notes)."""
        eval_id = picked_evaluation(store, eval_id)
        if eval_id is None:
            return ""
        notes = tables.coverage_notes(store.variants(eval_id), store.replies(eval_id), store.ratings_frame(eval_id))
        return "\n".join(f"- ⚠️ {note}" for note in notes)

    return on_coverage


def _decisions(store: Store):
    def on_decisions(eval_id):
        """Each fine-tuned model of the picked evaluation against the base: decided (anytime-valid)
        or not yet, after every rating so far (ratings.sequential)."""
        eval_id = picked_evaluation(store, eval_id)
        if eval_id is None:
            return ""
        return "\n".join(f"- {d.sentence()}" for d in sequential.for_evaluation(store, eval_id))

    return on_decisions


def _raters(value) -> int:
    """The number of raters typed, within 1–MAX_RATERS (the default when it is no number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return DEFAULT_RATERS
    return DEFAULT_RATERS if math.isnan(number) else int(min(MAX_RATERS, max(1, round(number))))


def plan_line(store: Store, eval_id, raters) -> str:
    """What the evaluation can detect with `raters` raters (ratings.planning), for the owner
    before inviting them; "" when there is no such evaluation."""
    eval_id = picked_evaluation(store, eval_id)
    if eval_id is None:
        return ""
    plan = planning.for_evaluation(store, eval_id, _raters(raters))
    return "" if plan is None else f"**Plan for evaluation #{eval_id}:** {plan.sentence()}"


def _planner(store: Store):
    def on_plan(raters, shown, pending, picked):
        """The plan again for the number of raters typed: for the evaluation the message shows,
        else the one waiting to open, else the one picked for rating."""
        for eval_id in (shown, pending, picked):
            if (line := plan_line(store, eval_id, raters)):
                return line
        return ""

    return on_plan


def _mark(field: str):
    def on_input(edited):
        return sorted(set(edited or []) | {field})

    return on_input


# the generation settings a recipe fills besides the cap: their place in `sampling` (see _settings)
FILLED_SETTINGS = {1: "temperature", 3: "repetition_penalty", 5: "batch_size"}


def _form_filler(trainer: RunManager):
    def on_runs(chosen_runs, current_checks, edited, filled_for):
        """A new first run fills the checks, the cap and the generation settings the recipe was
        measured with from its dataset's recipe (evalsets.recipe_fill), except what the owner
        changed by hand; adding a second run changes nothing."""
        first = (chosen_runs or [None])[0]
        try:
            run = trainer.get(first) if first else None
        except ValueError:  # not a run id at all (the list takes typed values)
            run = None
        if run is None or first == filled_for:
            return (gr.update(), gr.update(), *(gr.update() for _ in FILLED_SETTINGS), gr.update(), filled_for)
        kept = set(edited or []) - ({"checks"} if not (current_checks or "").strip() else set())
        fill = evalsets.recipe_fill(run, kept)
        return (gr.update() if fill.checks is None else gr.update(value=fill.checks),
                gr.update() if fill.max_new_tokens is None else gr.update(value=fill.max_new_tokens),
                *(gr.update(value=fill.settings[key]) if key in fill.settings else gr.update()
                  for key in FILLED_SETTINGS.values()),
                fill.note, first)

    return on_runs


def _generator(trainer: RunManager, generator: Generator, store: Store, generated: _Generated):
    def on_generate(title, chosen_runs, kind, text, uploaded_items, max_new_tokens, temp, p, rep, seed_, batch_size,
                    rules_text, tag_, code, checks_text, no_code_=False, reveal_=None, raters_=DEFAULT_RATERS,
                    progress_bar=gr.Progress()):
        try:
            picked = [r for r in (trainer.get(r) for r in (chosen_runs or [])) if r]
            base_model, variants = variants_for(picked)
            items, left_out = evalsets.leave_out_trained(_items_for(trainer, kind, chosen_runs, text, uploaded_items),
                                                         picked)
            checks = [c.text for c in rchecks.parse_checks(checks_text)]
            tokens, whence = int(max_new_tokens or 0), "set in the form"
            if not tokens:
                tokens, whence = evalsets.default_max_new_tokens(items, picked)
                tokens = tokens or GenSettings().max_new_tokens
            settings = GenSettings(max_new_tokens=tokens, temperature=float(temp), top_p=float(p),
                                   repetition_penalty=float(rep), seed=int(seed_ or 0), batch_size=int(batch_size))
            parsed_rules = evalsets.parse_rules(rules_text)
            # an invite code by default: without one, anyone with the link can make names and rate
            code = None if no_code_ else ((code or "").strip() or secrets.token_urlsafe(6))
            reveal = REVEAL_CHOICES.get(reveal_, "end")
        except (ValueError, OSError) as exc:
            return {generated.message: f"⚠️ {exc}"}
        progress_bar(0, desc="loading the model")

        def tick(done, total):  # `done` grows token by token within a batch
            progress_bar(done / total, desc=f"generating: {int(done)} of {total} replies done")

        try:
            eval_id = generate_evaluation(
                store, generator, (title or "").strip() or f"{len(items)} prompts, {len(variants)} variants",
                base_model, items, variants, settings, parsed_rules, bool(tag_), code,
                progress=tick, checks=checks, reveal=reveal, open_if_cut=False)
        except Exception as exc:  # a bad model, adapter or disk must not take the app down
            return {generated.message: f"⚠️ Generation failed: {type(exc).__name__}: {exc}"}
        seconds = store.replies(eval_id)["latency_s"].sum()
        shown = _shown(store, generated, eval_id, f"Generated {len(items)} × {len(variants)} replies in "
                       f"{seconds:.1f} s (evaluation #{eval_id}, up to {tokens} new tokens: {whence}).", raters_)
        # hand edits served this evaluation: the next run chosen fills the form afresh
        return shown | {generated.message: left_out + shown[generated.message], generated.edited: []}

    return on_generate


def _regenerator(trainer: RunManager, generator: Generator, store: Store, generated: _Generated):
    def on_regenerate(eval_id, raters_=DEFAULT_RATERS, progress_bar=gr.Progress()):
        """The cut prompts' replies again with twice the cap; rating opens once none is cut."""
        try:
            if eval_id is None or store.evaluation(int(eval_id)) is None:
                raise ValueError("No evaluation is waiting: generate one first.")
            eval_id = int(eval_id)
            before = cut_replies(store, eval_id)
            if before.larger_cap is None:
                raise ValueError(f"The cap is already {before.cap} tokens, the most there is: open rating anyway.")
            variants = _variants_of(trainer, store, eval_id)
        except ValueError as exc:
            return {generated.message: f"⚠️ {exc}"}
        progress_bar(0, desc="loading the model")

        def tick(done, total):
            progress_bar(done / total, desc=f"generating again: {int(done)} of {total} replies done")

        try:
            n = regenerate_cut(store, generator, eval_id, variants, before.larger_cap, progress=tick)
        except Exception as exc:  # the stored replies stay as they were
            return {generated.message: f"⚠️ Regeneration failed: {type(exc).__name__}: {exc}"}
        open_unless_cut(store, eval_id)
        return _shown(store, generated, eval_id, (
            f"Generated {n} replies again, on the {len(before.positions)} prompt(s) with a cut reply, with a cap of "
            f"{before.larger_cap} new tokens (evaluation #{eval_id}; before: {before.sentence()}; now: "
            f"{cut_replies(store, eval_id).cut} cut)."), raters_)

    return on_regenerate


def _opener(store: Store, generated: _Generated):
    def on_open(eval_id, raters_=DEFAULT_RATERS):
        if eval_id is None or store.evaluation(int(eval_id)) is None:
            return {generated.message: "⚠️ No evaluation is waiting: generate one first."}
        eval_id = int(eval_id)
        cut = cut_replies(store, eval_id)
        store.open_for_rating(eval_id)
        return _shown(store, generated, eval_id, f"Evaluation #{eval_id} opened for rating as it is"
                      + (f" ({cut.sentence()}; they are marked ✂ below, never for raters)." if cut.cut else "."),
                      raters_)

    return on_open


def _variants_of(trainer: RunManager, store: Store, eval_id: int):
    """The evaluation's variants with their adapters, from its runs as they are now."""
    names = [v["name"] for v in store.variants(eval_id) if v["name"] != BASE]
    runs = [trainer.get(name) for name in names]
    gone = [name for name, run in zip(names, runs) if run is None]
    if gone:
        raise ValueError(f"run(s) {', '.join(gone)} no longer exist: open rating anyway, or generate anew")
    return variants_for(runs)[1]


def _items_for(trainer: RunManager, kind, chosen_runs, text, uploaded_items):
    if kind.startswith("held-out"):
        return evalsets.from_run(trainer.get(chosen_runs[0]))
    if kind == "typed prompts":
        return evalsets.from_lines(text)
    if not uploaded_items:  # read from the upload by its preview (the file is deleted once read)
        raise ValueError("Upload a CSV or JSONL file of prompts first.")
    return uploaded_items


def _shown(store: Store, generated: _Generated, eval_id: int, header: str, raters=DEFAULT_RATERS) -> dict:
    """The evaluation's replies and automatic check, for the owner; the invite code only
    once rating is open, else the choice cut replies call for; and the plan: what it can
    detect with the raters the owner will invite."""
    replies = store.replies(eval_id)
    evaluation = store.evaluation(eval_id)
    check = rchecks.of_evaluation(evaluation, replies)
    # the owner sees which replies hit the cap; raters never do
    shown = replies.assign(cut=["✂ cut" if c else "" for c in check.replies["cut at the token cap"]])
    is_open = store.is_open(eval_id)
    if is_open:
        code = evaluation.get("invite_code")
        status = "Raters can start now. " + (f"Raters need the invite code **`{code}`** with the /rate link." if code
                                             else "No invite code: anyone with the /rate link can rate.")
    else:
        status = f"**Rating is not open yet:** {cut_replies(store, eval_id).sentence()}; choose below."
    return {generated.message: f"{header} {status}\n\n" + rchecks.verdict(check),
            generated.preview: gr.update(value=shown[["position", "task", "prompt", "label", "reply", "cut", "flags"]],
                                         visible=True),
            generated.rate_eval: gr.update(choices=eval_choices(store, open_only=True), value=eval_id) if is_open
            else gr.update(choices=eval_choices(store, open_only=True)),
            generated.check_group: gr.update(visible=True),
            generated.check_table: rchecks.display(check.table),
            generated.check_paired: rchecks.display_paired(check.paired),
            generated.plan: plan_line(store, eval_id, raters),
            generated.shown: eval_id} | _gate_shown(store, generated, eval_id)


def _gate_shown(store: Store, generated: _Generated, eval_id: int) -> dict:
    """The owner's choice for an evaluation not open yet; hidden once it is."""
    gate = generated.gate
    if store.is_open(eval_id):
        return {gate.group: gr.update(visible=False), gate.pending: None}
    cut = cut_replies(store, eval_id)
    larger = cut.larger_cap if cut.cut else None
    note = (f"✂ **Evaluation #{eval_id}: {cut.sentence()}.** Raters would score text that stops mid-sentence. "
            "Generate those prompts' replies again with a larger cap (everything else is kept), or open rating "
            "as it is." if cut.cut else f"Evaluation #{eval_id} is not open for rating yet.")
    return {gate.group: gr.update(visible=True), gate.note: note, gate.pending: eval_id,
            gate.regenerate: gr.update(value=f"Regenerate with a cap of {larger}", visible=larger is not None)}


def on_upload_preview(file):
    """How many prompts the file gives, with what, and the first one: before Generate.
    The prompts are kept for Generate and the uploaded file is deleted at once."""
    if file is None:
        return "", None
    path = Path(file if isinstance(file, str) else file.name)
    try:
        items = evalsets.from_file(path)
    except (ValueError, OSError) as exc:
        return f"⚠️ {exc}", None
    finally:
        forget_upload(path)
    with_ref = sum(1 for i in items if i.get("reference"))
    categories = sorted({i["category"] for i in items if i.get("category")})
    first = items[0]["text"] if items else ""
    return (f"**{len(items)} prompts** in `{path.name}`: {with_ref} with a reference answer"
            + (f", categories {', '.join(categories[:8])}{' …' if len(categories) > 8 else ''}" if categories
               else "") + (f". First: “{first[:120]}{'…' if len(first) > 120 else ''}”" if first else ".")), items
