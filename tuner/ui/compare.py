"""The Compare tab: build an evaluation (prompts, variants, fixed generation settings),
see the automatic checks, then rate it blind like a rater.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ratings import checks as rchecks
from ratings import evalsets
from ratings.generation import generate_evaluation, variants_for
from ratings.store import Store
from tuner import data as tdata
from tuner import recipes
from tuner.generate import GenSettings, Generator
from tuner.runs import RunManager
from tuner.ui.access import forget_upload
from tuner.ui.rate import REVEAL_CHOICES, RaterLimits, eval_choices, rating_panel
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

    def outputs(self) -> list:
        return [self.message, self.preview, self.rate_eval, self.check_group, self.check_table, self.check_paired]


def compare_tab(trainer: RunManager, generator: Generator, store: Store, rng: random.Random,
                secret: str | None = None, limits: RaterLimits | None = None):
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
    generate = gr.Button("Generate replies", variant="primary", elem_id="generate")
    message = gr.Markdown(elem_id="generate-message")
    check_group, check_table, check_paired = _check_section()
    preview = gr.Dataframe(interactive=False, wrap=True, elem_id="eval-replies", max_height=360, visible=False)

    gr.Markdown("### 2. Rate blind\nShare the raters' page (**/rate** on this app's address) with friends, "
                "or rate here yourself.")
    rate_eval = rating_panel(store, rng, "rate", public=False, secret=secret, limits=limits)
    generated = _Generated(message, preview, rate_eval, check_group, check_table, check_paired)

    def on_refresh():
        return gr.update(choices=finished_runs(trainer))

    upload.change(on_upload_preview, upload, [upload_note, uploaded])
    refresh.click(on_refresh, None, runs)
    source.change(lambda kind: (gr.update(visible=kind == "typed prompts"), gr.update(visible=kind == "uploaded file"),
                                gr.update(visible=kind == "uploaded file")),
                  source, [typed, upload, upload_note])
    runs.change(_checks_filler(trainer), [runs, checks_box], checks_box)
    generate.click(_generator(trainer, generator, store, generated),
                   [name, runs, source, typed, uploaded, *sampling, rules, tag, invite, checks_box, no_code,
                    reveal_choice], generated.outputs())

    def refresh_all(first: bool = False):
        """The runs and evaluations as they are now (the page is built with neither);
        on the page's load, the newest evaluation is picked."""
        evals = eval_choices(store)
        picked = gr.update(choices=evals, value=evals[0][1]) if first and evals else gr.update(choices=evals)
        return {runs: gr.update(choices=finished_runs(trainer)), rate_eval: picked}

    def load_all():
        return refresh_all(first=True)

    return refresh_all, load_all, [runs, rate_eval]


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


def _check_section():
    with gr.Group(visible=False) as check_group:
        gr.Markdown("#### Automatic check, before anyone rates\nPass rates with 95% Wilson intervals (means "
                    "with t intervals for F1, ROUGE-L and words), then each fine-tuned model against the base on "
                    "the same prompts (McNemar's exact test for pass/fail, the sign test for F1 and ROUGE-L).")
        check_table = gr.Dataframe(interactive=False, elem_id="check-table")
        check_paired = gr.Dataframe(interactive=False, elem_id="check-paired")
    return check_group, check_table, check_paired


def _checks_filler(trainer: RunManager):
    def on_runs(chosen_runs, current_checks):
        """The first run's dataset recipe fills an empty checks box; what the owner typed stays."""
        if (current_checks or "").strip() or not chosen_runs:
            return gr.update()
        run = trainer.get(chosen_runs[0])
        try:
            recipe = recipes.for_dataset((run or {}).get("config", {}).get("dataset"),
                                         parse_checks=rchecks.parse_checks)
        except ValueError:
            recipe = None
        return gr.update(value="\n".join(recipe.checks)) if recipe and recipe.checks else gr.update()

    return on_runs


def _generator(trainer: RunManager, generator: Generator, store: Store, generated: _Generated):
    def on_generate(title, chosen_runs, kind, text, uploaded_items, max_new_tokens, temp, p, rep, seed_, batch_size,
                    rules_text, tag_, code, checks_text, no_code_=False, reveal_=None, progress_bar=gr.Progress()):
        try:
            picked = [r for r in (trainer.get(r) for r in (chosen_runs or [])) if r]
            base_model, variants = variants_for(picked)
            items, left_out = evalsets.leave_out_trained(_items_for(trainer, kind, chosen_runs, text, uploaded_items),
                                                         picked)
            checks = [c.text for c in rchecks.parse_checks(checks_text)]
            tokens = int(max_new_tokens or 0) or default_max_new_tokens(items, picked)
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
                progress=tick, checks=checks, reveal=reveal)
        except Exception as exc:  # a bad model, adapter or disk must not take the app down
            return {generated.message: f"⚠️ Generation failed: {type(exc).__name__}: {exc}"}
        shown = _shown(store, generated, eval_id, (len(items), len(variants)), tokens, code)
        return shown | {generated.message: left_out + shown[generated.message]}

    return on_generate


def _items_for(trainer: RunManager, kind, chosen_runs, text, uploaded_items):
    if kind.startswith("held-out"):
        return evalsets.from_run(trainer.get(chosen_runs[0]))
    if kind == "typed prompts":
        return evalsets.from_lines(text)
    if not uploaded_items:  # read from the upload by its preview (the file is deleted once read)
        raise ValueError("Upload a CSV or JSONL file of prompts first.")
    return uploaded_items


def _shown(store: Store, generated: _Generated, eval_id: int, counts: tuple[int, int], tokens: int,
           code: str | None) -> dict:
    """The new evaluation's replies and automatic check, for the owner."""
    replies = store.replies(eval_id)
    seconds = replies["latency_s"].sum()
    check = rchecks.of_evaluation(store.evaluation(eval_id), replies)
    # the owner sees which replies hit the cap; raters never do
    shown = replies.assign(cut=["✂ cut" if c else "" for c in check.replies["cut at the token cap"]])
    share = (f"Raters need the invite code **`{code}`** with the /rate link." if code else
             "No invite code: anyone with the /rate link can rate.")
    text = (f"Generated {counts[0]} × {counts[1]} replies in {seconds:.1f} s (evaluation #{eval_id}, "
            f"up to {tokens} new tokens). Raters can start now. {share}\n\n" + rchecks.verdict(check))
    return {generated.message: text,
            generated.preview: gr.update(value=shown[["position", "task", "prompt", "label", "reply", "cut", "flags"]],
                                         visible=True),
            generated.rate_eval: gr.update(choices=eval_choices(store), value=eval_id),
            generated.check_group: gr.update(visible=True),
            generated.check_table: rchecks.display(check.table),
            generated.check_paired: rchecks.display_paired(check.paired)}


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


def default_max_new_tokens(items: list[dict], runs: list[dict]) -> int:
    """Room for the evaluation's reference answers or, without references, for the
    first run's training replies (tuner.recipes.max_new_tokens_for)."""
    references = [i["reference"] for i in items if i.get("reference")]
    if not references and runs:
        try:
            rows = tdata.load_jsonl(Path(runs[0]["config"]["dataset"])).rows
            references = [r["messages"][-1]["content"] for r in rows]
        except (OSError, KeyError, ValueError):
            references = []
    return recipes.max_new_tokens_for(references) if references else GenSettings().max_new_tokens
