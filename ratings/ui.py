"""The rating views (Compare tab, raters' page), the Playground and the Results tab.

Only UI code imports gradio. Blindness: the browser receives the prompt and the
two reply texts; which variant is on which side lives in SQLite (assignments),
and the session's server-side gr.State holds only the assignment id and the
rater's name. Variant names are sent only in the reveal, after
`Store.rate_pair` has committed.
"""

from __future__ import annotations

import json
import random
import secrets
import tempfile
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from ratings import checks as rchecks
from ratings import evalsets, exports, stats
from ratings.generation import generate_evaluation, variants_for
from ratings.store import ASPECTS, RatingError, Store, clean_rater
from tuner.access import RateLimiter
from tuner import data as tdata
from tuner import recipes
from tuner.generate import GenSettings, Generator
from tuner.paths import StorageError
from tuner.runs import RunManager, run_label
from tuner.train import read_metrics
from tuner.ui_access import forget_upload, hf_username, request_address, sign_in_available
from tuner.ui_train import VEGA_LITE, curve_frame, finished_runs, short_label, vega_plot

RUBRIC = ("**Helpfulness, 1–5:** 5 = usable as is · 4 = small edits · 3 = needs work · "
          "2 = mostly unhelpful · 1 = wrong or harmful. A score of 4 or more counts as a success. "
          "Keys: 1–5 score reply A then reply B, Enter submits.")
SCORES = [1, 2, 3, 4, 5]

# Keys 1-5 fill the first unset score (A, then B) of the visible rating panel;
# Enter submits it. Only when focus is not in a text field.
KEYS_JS = """
<script>
document.addEventListener('keydown', (e) => {
  const t = e.target; if (t && (t.tagName === 'TEXTAREA' || (t.tagName === 'INPUT' && t.type === 'text'))) return;
  const panels = [...document.querySelectorAll('.rating-panel')].filter(p => p.offsetParent !== null);
  if (!panels.length) return;
  const panel = panels[0];
  if (e.key >= '1' && e.key <= '5') {
    for (const side of ['a', 'b']) {
      const group = panel.querySelector(`.score-${side}`);
      if (group && !group.querySelector('input:checked')) {
        const input = group.querySelector(`input[value="${e.key}"]`); if (input) input.click(); return;
      }
    }
  } else if (e.key === 'Enter') {
    const button = panel.querySelector('.rate-submit'); if (button) button.click();
  }
});
</script>
"""


class RaterLimits:
    """Per-rater submissions (a person needs seconds a pair; a script floods) and
    sign-ins per client address. One instance per app, shared by its panels."""

    def __init__(self, submits: tuple[int, float] = (10, 30.0), joins: tuple[int, float] = (30, 600.0)):
        self.submits = RateLimiter(*submits)
        self.joins = RateLimiter(*joins)


# table headers are model labels ("lora: polite r16 (2026…)"): wrapped per word, never a letter a line
CSS = """
#per-prompt-table th, #per-prompt-table th *, #breakdown-table th, #breakdown-table th *,
#success-table th, #success-table th * { min-width: 7em; word-break: normal !important; overflow-wrap: normal; }
"""

REVEAL_CHOICES = {"after their last pair": "end", "after each pair": "each"}


def eval_choices(store: Store, open_only: bool = False) -> list[tuple[str, int]]:
    """(label, id) of every evaluation, newest first; `open_only`: those open for rating
    (what the raters' page may show a stranger)."""
    return [(f"#{e['id']} {e['name']} ({e['n_prompts']} prompts × {e['n_variants']} variants)", e["id"])
            for e in store.evaluations() if e["open_for_rating"] or not open_only]


def rating_panel(store: Store, rng: random.Random, prefix: str, public: bool, secret: str | None = None,
                 limits: RaterLimits | None = None):
    """Join (name, invite code) → pairs one at a time → scores → commit → reveal.

    The same panel serves the owner's Compare tab and the raters' page. Its
    handlers only read this rater's next pair and write this rater's ratings.
    Identity: a Hugging Face sign-in, else the typed name, which belongs to the
    browser that first used it (its key is kept in that browser's storage);
    the name then lives in server-side state, never taken from the browser.
    Returns the evaluation dropdown, so the page can refresh its choices.
    """
    limits = limits or RaterLimits()
    with gr.Column(elem_classes=["rating-panel"]):
        with gr.Row():
            # built empty (names are the owner's until the page's load lists the open ones); any
            # value is let through to the handler, which checks it is an open evaluation
            evaluation = gr.Dropdown([], value=None, allow_custom_value=True, label="Evaluation",
                                     elem_id=f"{prefix}-eval", scale=2)
            name = gr.Textbox(label="Your name", elem_id=f"{prefix}-name", scale=2,
                              info="On a Space you can sign in with Hugging Face instead." if public else None)
            code = gr.Textbox(label="Invite code (if the owner set one)", elem_id=f"{prefix}-code", scale=1,
                              type="password")
            join = gr.Button("Start rating", elem_id=f"{prefix}-start", scale=1)
        gr.Markdown(RUBRIC)
        progress = gr.Markdown(elem_id=f"{prefix}-progress")
        prompt = gr.Markdown(elem_id=f"{prefix}-prompt")
        with gr.Row():
            sides = []
            for side in ("a", "b"):
                with gr.Column():
                    reply = gr.Textbox(label=f"Reply {side.upper()}", lines=8, interactive=False,
                                       elem_id=f"{prefix}-reply-{side}")
                    score = gr.Radio(SCORES, label=f"Helpfulness of reply {side.upper()}",
                                     elem_id=f"{prefix}-score-{side}", elem_classes=[f"score-{side}"])
                    with gr.Accordion("More (optional): adherence, tone, clarity", open=False):
                        aspects = [gr.Radio(SCORES, label=f"{aspect.capitalize()} ({side.upper()})")
                                   for aspect in ASPECTS]
                    sides.append((reply, score, aspects))
        with gr.Row():
            preference = gr.Radio(["A", "B", "tie"], label="Which reply is better? (optional)",
                                  elem_id=f"{prefix}-preference", scale=1)
            comment = gr.Textbox(label="Comment (optional)", elem_id=f"{prefix}-comment", scale=2)
        with gr.Row():
            submit = gr.Button("Submit ratings", variant="primary", elem_id=f"{prefix}-submit",
                               elem_classes=["rate-submit"], scale=3)
            change = gr.Button("Change my scores", elem_id=f"{prefix}-change", size="sm", scale=1)
        reveal = gr.Markdown(elem_id=f"{prefix}-reveal")
        next_pair = gr.Button("Next pair", elem_id=f"{prefix}-next")
    rater = gr.State(None)  # server-side: set by join, never taken from the browser afterwards
    # this browser's proof of the names it has used; encrypted with the app's secret
    keys = gr.BrowserState({}, storage_key="tuner-rater-keys", secret=secret)
    eval_state = gr.State(None)
    assignment = gr.State(None)  # server-side: the browser never sees the mapping
    (reply_a, score_a, aspects_a), (reply_b, score_b, aspects_b) = sides
    clearable = [score_a, score_b, *aspects_a, *aspects_b, preference, comment]

    def serve(eval_id, who):
        blank = [None, "", "", ""] + [None] * len(clearable) + [""]
        if eval_id is None or who is None:
            return ["⚠️ Choose an evaluation, enter your name and press Start rating.", *blank]
        try:
            pair = store.next_pair(int(eval_id), who, rng)
        except (RatingError, StorageError) as exc:
            return [f"⚠️ {exc}", *blank]
        if pair is None:
            done, total = store.progress(int(eval_id), who)
            return [f"✅ {who}, you have rated all {total} pairs of this evaluation. Thank you!", *blank]
        flags = f" · flagged: **{', '.join(pair['flags'])}**" if pair["flags"] else ""
        heading = f"**Task:** {pair['task']}{flags}\n\n**Prompt:** {pair['prompt']}" if pair["task"] else \
            f"**Prompt:** {pair['prompt']}{flags}"
        return [f"{who} · pair {pair['done'] + 1} of {pair['total']}", pair["assignment_id"], heading,
                pair["reply_a"], pair["reply_b"]] + [None] * len(clearable) + [""]

    def on_join(eval_id, typed_name, invite, known_keys, request: gr.Request):
        # a Hugging Face sign-in (on a Space with hf_oauth) names the rater; else the typed name
        signed_in = hf_username(request)
        known_keys = known_keys if isinstance(known_keys, dict) else {}
        client = request_address(request)  # on a Space: the proxy's X-Forwarded-For entry
        try:
            allowed, wait = limits.joins.allow(client)
            if not allowed:
                raise RatingError(f"Too many sign-ins from this address; try again in {wait:.0f} s.")
            if eval_id is None:
                raise RatingError("Choose an evaluation first.")
            try:  # the list is filled by the page; a script may send anything
                eval_id = int(eval_id)
            except (TypeError, ValueError):
                raise RatingError("Choose an evaluation from the list.") from None
            if not store.is_open(eval_id):
                raise RatingError("That evaluation is not open for rating: choose one from the list.")
            if public:  # the owner's own panel (Compare, owner-only) needs no invite code
                store.check_invite(eval_id, invite)
            name = clean_rater(signed_in or typed_name)
            who, key = store.claim_rater(name, known_keys.get(name), signed_in=bool(signed_in))
            store.join(eval_id, who, client)
        except RatingError as exc:
            return [None, None, gr.skip(), f"⚠️ {exc}", None, "", "", ""] + [None] * len(clearable) + [""]
        if key:
            known_keys = {**known_keys, who: key}
        return [who, eval_id, known_keys] + serve(eval_id, who)

    def on_submit(assignment_id, who, eval_id, a, b, pref, text, *aspect_values):
        if assignment_id is None or who is None:
            return "⚠️ Press Start rating to get a pair first.", gr.update()
        allowed, wait = limits.submits.allow(who)
        if not allowed:
            return f"⚠️ Too many ratings too fast; wait {wait:.0f} s and submit again.", gr.update()
        n = len(ASPECTS)
        try:
            result = store.rate_pair(assignment_id, who, a, b, dict(zip(ASPECTS, aspect_values[:n])),
                                     dict(zip(ASPECTS, aspect_values[n:])), pref or None, text)
        except (RatingError, StorageError) as exc:  # nothing was saved: the pair stays to submit again
            return f"⚠️ {exc}", gr.update()
        done, total = store.progress(int(eval_id), who)
        # committed: now, and only now, say which reply was which (after each pair, or
        # by default only after the rater's last pair, so no one learns a model's style)
        if store.reveal_of(int(eval_id)) == "each":
            return (f"Saved ({done} of {total} done). **Reply A** was **{result['a_label']}** (you gave "
                    f"{result['score_a']}); **Reply B** was **{result['b_label']}** (you gave {result['score_b']}). "
                    "Press **Next pair** to go on.", gr.update())
        if done < total:
            return (f"Saved ({done} of {total} done). Which model wrote each reply is shown after your last pair. "
                    "Press **Next pair** to go on.", gr.update())
        return "Saved: that was your last pair. Thank you!\n\n" + reveal_text(store.rater_reveal(int(eval_id), who)), \
            gr.update()

    def on_change(assignment_id, who, eval_id, a, b):
        if assignment_id is None or who is None:
            return "⚠️ Rate a pair first; then you can change its scores."
        try:
            changed = store.change_scores(assignment_id, who, a, b)
        except (RatingError, StorageError) as exc:
            return f"⚠️ {exc}"
        return (f"Changed your scores for this pair: Reply A {changed['old_a']} → {changed['score_a']}, "
                f"Reply B {changed['old_b']} → {changed['score_b']} (the change is recorded).")

    serve_outputs = [progress, assignment, prompt, reply_a, reply_b, *clearable, reveal]
    # Raters' events skip Gradio's queue (the page POSTs them straight to /gradio_api/run/…):
    # each is a few ms of SQLite, the queue's bookkeeping and event stream cost more than
    # that, and its default of 4 at a time would make 25 friends pressing Submit together
    # wait their turn. Simultaneous submissions still share one commit (Store.grouped).
    fast = {"queue": False}
    join.click(on_join, [evaluation, name, code, keys], [rater, eval_state, keys, *serve_outputs],
               api_name=f"{prefix}_join", **fast)
    submit.click(on_submit, [assignment, rater, eval_state, score_a, score_b, preference, comment,
                             *aspects_a, *aspects_b], [reveal, assignment], api_name=f"{prefix}_submit", **fast)
    next_pair.click(serve, [eval_state, rater], serve_outputs, api_name=f"{prefix}_next", **fast)
    change.click(on_change, [assignment, rater, eval_state, score_a, score_b], reveal, api_name=f"{prefix}_change",
                 **fast)
    return evaluation


def reveal_text(pairs: list[dict]) -> str:
    """A rater's own pairs, revealed: which model wrote Reply A and Reply B, and the scores given."""
    lines = ["**Which model wrote which:**"]
    for i, pair in enumerate(pairs, start=1):
        lines.append(f"- pair {i} (prompt {pair['position']}): A was **{pair['a_label']}** (you gave "
                     f"{pair['score_a']}), B was **{pair['b_label']}** (you gave {pair['score_b']})")
    return "\n".join(lines)


def compare_tab(trainer: RunManager, generator: Generator, store: Store, rng: random.Random,
                secret: str | None = None, limits: RaterLimits | None = None):
    gr.Markdown("### 1. Build an evaluation\nGenerate every reply now, with fixed settings, so raters never wait.")
    with gr.Row():
        name = gr.Textbox(label="Evaluation name", placeholder="e.g. polite assistant, 5 held-out prompts",
                          elem_id="eval-name", scale=2)
        runs = gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Fine-tuned runs to compare with the base",
                           elem_id="compare-run", scale=3)
        refresh = gr.Button("↻ Runs", scale=0)
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
    uploaded = gr.State(None)  # the prompts read from the upload
    with gr.Accordion("Generation settings, keyword rules, invite code", open=False):
        with gr.Row():
            defaults = GenSettings()
            max_new = gr.Slider(0, 512, value=0, step=16, elem_id="eval-max-new",
                                label="Max new tokens (0: from the references' lengths, else the training replies')")
            temperature = gr.Slider(0, 1.5, value=defaults.temperature, step=0.05, label="Temperature (0: greedy)")
            top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top p")
            penalty = gr.Slider(1.0, 2.0, value=defaults.repetition_penalty, step=0.05, label="Repetition penalty")
            seed = gr.Number(value=defaults.seed, label="Seed", precision=0)
            batch = gr.Slider(1, 32, value=defaults.batch_size, step=1, label="Batch size (rows)")
        with gr.Row():
            rules = gr.Textbox(lines=3, label="Keyword rules, one per line: 'flag: keyword, keyword priority N'",
                               placeholder="escalate: cancel, angry, lawsuit priority 1", elem_id="eval-rules")
            tag = gr.Checkbox(value=False, label="Add the flags as a tag to the prompt the model sees")
            invite = gr.Textbox(label="Invite code for raters (empty: one is made for you)", elem_id="eval-invite")
            no_code = gr.Checkbox(value=False, label="No invite code: anyone with the link can rate",
                                  elem_id="eval-no-code")
            reveal_choice = gr.Radio(list(REVEAL_CHOICES), value=next(iter(REVEAL_CHOICES)), elem_id="eval-reveal",
                                     label="Raters learn which model wrote each reply")
    checks_box = gr.Textbox(
        lines=3, elem_id="eval-checks",
        label="Automatic checks, one per line, run right after generation (filled from the dataset's recipe)",
        placeholder="starts with: Subject:\ncontains any: sorry, cannot\nnot contains: As an AI\n"
                    "[refusal] max words: 80\nregex: ^Dear \\w+")
    generate = gr.Button("Generate replies", variant="primary", elem_id="generate")
    message = gr.Markdown(elem_id="generate-message")
    with gr.Group(visible=False) as check_group:
        gr.Markdown("#### Automatic check, before anyone rates\nPass rates with 95% Wilson intervals (means "
                    "with t intervals for F1, ROUGE-L and words), then each fine-tuned model against the base on "
                    "the same prompts (McNemar's exact test for pass/fail, the sign test for F1 and ROUGE-L).")
        check_table = gr.Dataframe(interactive=False, elem_id="check-table")
        check_paired = gr.Dataframe(interactive=False, elem_id="check-paired")
    preview = gr.Dataframe(interactive=False, wrap=True, elem_id="eval-replies", max_height=360, visible=False)

    gr.Markdown("### 2. Rate blind\nShare the raters' page (**/rate** on this app's address) with friends, "
                "or rate here yourself.")
    rate_eval = rating_panel(store, rng, "rate", public=False, secret=secret, limits=limits)

    def on_refresh():
        return gr.update(choices=finished_runs(trainer))

    def items_for(kind, chosen_runs, text, uploaded_items):
        if kind.startswith("held-out"):
            return evalsets.from_run(trainer.get(chosen_runs[0]))
        if kind == "typed prompts":
            return evalsets.from_lines(text)
        if not uploaded_items:  # read from the upload by its preview (the file is deleted once read)
            raise ValueError("Upload a CSV or JSONL file of prompts first.")
        return uploaded_items

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

    def on_generate(title, chosen_runs, kind, text, uploaded_items, max_new_tokens, temp, p, rep, seed_, batch_size,
                    rules_text, tag_, code, checks_text, no_code_=False, reveal_=None, progress_bar=gr.Progress()):
        keep = gr.update()
        try:
            picked = [trainer.get(r) for r in (chosen_runs or [])]
            base_model, variants = variants_for([r for r in picked if r])
            items = items_for(kind, chosen_runs, text, uploaded_items)
            checks = [c.text for c in rchecks.parse_checks(checks_text)]
            tokens = int(max_new_tokens or 0) or default_max_new_tokens(items, [r for r in picked if r])
            settings = GenSettings(max_new_tokens=tokens, temperature=float(temp), top_p=float(p),
                                   repetition_penalty=float(rep), seed=int(seed_ or 0), batch_size=int(batch_size))
            parsed_rules = evalsets.parse_rules(rules_text)
            # an invite code by default: without one, anyone with the link can make names and rate
            code = None if no_code_ else ((code or "").strip() or secrets.token_urlsafe(6))
            reveal = REVEAL_CHOICES.get(reveal_, "end")
        except (ValueError, OSError) as exc:
            return f"⚠️ {exc}", keep, keep, keep, keep, keep
        progress_bar(0, desc="loading the model")

        def tick(done, total):  # `done` grows token by token within a batch
            progress_bar(done / total, desc=f"generating: {int(done)} of {total} replies done")

        try:
            eval_id = generate_evaluation(
                store, generator, (title or "").strip() or f"{len(items)} prompts, {len(variants)} variants",
                base_model, items, variants, settings, parsed_rules, bool(tag_), code,
                progress=tick, checks=checks, reveal=reveal)
        except Exception as exc:  # a bad model, adapter or disk must not take the app down
            return f"⚠️ Generation failed: {type(exc).__name__}: {exc}", keep, keep, keep, keep, keep
        replies = store.replies(eval_id)
        seconds = replies["latency_s"].sum()
        check = rchecks.of_evaluation(store.evaluation(eval_id), replies)
        # the owner sees which replies hit the cap; raters never do
        shown = replies.assign(cut=["✂ cut" if c else "" for c in check.replies["cut at the token cap"]])
        table = gr.update(value=shown[["position", "task", "prompt", "label", "reply", "cut", "flags"]], visible=True)
        share = (f"Raters need the invite code **`{code}`** with the /rate link." if code else
                 "No invite code: anyone with the /rate link can rate.")
        text = (f"Generated {len(items)} × {len(variants)} replies in {seconds:.1f} s (evaluation #{eval_id}, "
                f"up to {tokens} new tokens). Raters can start now. {share}\n\n" + rchecks.verdict(check))
        return (text, table, gr.update(choices=eval_choices(store), value=eval_id), gr.update(visible=True),
                rchecks.display(check.table), rchecks.display_paired(check.paired))

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

    upload.change(on_upload_preview, upload, [upload_note, uploaded])
    refresh.click(on_refresh, None, runs)
    source.change(lambda kind: (gr.update(visible=kind == "typed prompts"), gr.update(visible=kind == "uploaded file"),
                                gr.update(visible=kind == "uploaded file")),
                  source, [typed, upload, upload_note])
    runs.change(on_runs, [runs, checks_box], checks_box)
    generate.click(on_generate, [name, runs, source, typed, uploaded, max_new, temperature, top_p, penalty, seed,
                                 batch, rules, tag, invite, checks_box, no_code, reveal_choice],
                   [message, preview, rate_eval, check_group, check_table, check_paired])

    def refresh_all(first: bool = False):
        """The runs and evaluations as they are now (the page is built with neither);
        on the page's load, the newest evaluation is picked."""
        evals = eval_choices(store)
        picked = gr.update(choices=evals, value=evals[0][1]) if first and evals else gr.update(choices=evals)
        return gr.update(choices=finished_runs(trainer)), picked

    def load_all():
        return refresh_all(first=True)

    return refresh_all, load_all, [runs, rate_eval]


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


def raters_page(store: Store, rng: random.Random, secret: str | None = None, limits: RaterLimits | None = None):
    """The page friends get: rating only."""
    gr.Markdown("# Rate replies\nTwo assistants answered the same prompt. Rate each reply; "
                "you will see which model wrote which after you submit.")
    if sign_in_available():
        gr.LoginButton()
    evaluation = rating_panel(store, rng, "rater", public=True, secret=secret, limits=limits)
    def rater_evaluations():
        evals = eval_choices(store, open_only=True)
        return gr.update(choices=evals, value=evals[0][1] if evals else None)

    return rater_evaluations, evaluation


def playground_tab(trainer: RunManager, generator: Generator):
    """Chat with two variants side by side, same settings: quick checks before an evaluation."""
    with gr.Row():
        left = gr.Dropdown(label="Left", elem_id="play-left", scale=1)
        right = gr.Dropdown(label="Right", elem_id="play-right", scale=1)
        max_new = gr.Slider(16, 512, value=GenSettings().max_new_tokens, step=16, label="Max new tokens", scale=1)
    with gr.Row():
        chat_left = gr.Chatbot(label="Left", elem_id="play-chat-left", height=360)
        chat_right = gr.Chatbot(label="Right", elem_id="play-chat-right", height=360)
    with gr.Row():
        box = gr.Textbox(label="Message", elem_id="play-message", scale=4)
        send = gr.Button("Send", variant="primary", elem_id="play-send", scale=1)
        clear = gr.Button("Clear", scale=1)
    note = gr.Markdown(elem_id="play-note")

    def choices():
        options = [("base model of the chosen runs", "base")]
        options += finished_runs(trainer)
        return options

    def refresh():
        options = choices()
        return gr.update(choices=options, value="base"), gr.update(
            choices=options, value=options[1][1] if len(options) > 1 else "base")

    def reply(history, variant, text, settings, base_model):
        conversation = [{"role": m["role"], "content": _text(m["content"])} for m in history]
        conversation.append({"role": "user", "content": text})
        run = trainer.get(variant) if variant != "base" else None
        adapter = (run["run_id"], Path(run["path"]) / "adapter") if run else None
        answer = generator.generate(base_model, [conversation], settings, adapter=adapter)[0].text
        return history + [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]

    def on_send(text, l_variant, r_variant, tokens, h_left, h_right):
        text = (text or "").strip()
        if not text:
            return gr.update(), h_left, h_right, "⚠️ Type a message."
        runs = [trainer.get(v) for v in (l_variant, r_variant) if v and v != "base"]
        bases = {r["config"]["base_model"] for r in runs if r}
        if len(bases) > 1:
            return gr.update(), h_left, h_right, "⚠️ The two runs have different base models."
        from tuner.models import BUNDLED

        base_model = bases.pop() if bases else BUNDLED
        settings = GenSettings(max_new_tokens=int(tokens))
        try:
            h_left = reply(h_left or [], l_variant or "base", text, settings, base_model)
            h_right = reply(h_right or [], r_variant or "base", text, settings, base_model)
        except Exception as exc:
            return gr.update(), h_left, h_right, f"⚠️ {type(exc).__name__}: {exc}"
        return "", h_left, h_right, f"Both replies use greedy decoding, at most {int(tokens)} new tokens, base `{base_model}`."

    send.click(on_send, [box, left, right, max_new, chat_left, chat_right], [box, chat_left, chat_right, note])
    box.submit(on_send, [box, left, right, max_new, chat_left, chat_right], [box, chat_left, chat_right, note])
    clear.click(lambda: ([], [], ""), None, [chat_left, chat_right, note])
    return refresh, [left, right]


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # gradio 6 message content can be a list of parts
        return " ".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def results_tab(store: Store, trainer: RunManager | None = None):
    """Every table of `ratings.exports.gather` for one evaluation, the plots and the exports.

    Returns (show, its inputs, its outputs) so the page can refresh the tab when it is opened.
    """
    with gr.Row():
        eval_pick = gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="Evaluation",
                                elem_id="results-eval", scale=3)
        threshold = gr.Radio(SCORES, value=stats.SUCCESS, label="A reply succeeds when scored at least",
                             elem_id="results-threshold", scale=2)
        refresh = gr.Button("↻ Refresh", elem_id="results-refresh", scale=0)
    summary = gr.Markdown(elem_id="results-summary")
    # collapsible sections: the page was one 4,400-pixel column
    with gr.Accordion("Success rate per model", open=True, elem_id="results-section-success"):
        gr.Markdown("Replies scored at or above the threshold / replies rated, with 95% Wilson intervals; the "
                    "mean score with its 95% t interval.")
        success = gr.Dataframe(interactive=False, elem_id="success-table")
        plots_key = gr.State(None)  # a new value re-renders the plots (see _results_plots)
        _results_plots(store, trainer, plots_key)
    with gr.Accordion("Per prompt", open=True, elem_id="results-section-prompts"):
        gr.Markdown("Each model's mean score over the raters, and the model with the highest mean.")
        raters = gr.Checkbox(False, label="Show each rater's scores", elem_id="results-raters")
        per_prompt = gr.Dataframe(interactive=False, wrap=True, max_height=900, elem_id="per-prompt-table")
    with gr.Accordion("Breakdown", open=True, elem_id="results-section-breakdown"):
        by = gr.Radio([], label="Success rate by", elem_id="results-by")
        breakdown = gr.Dataframe(interactive=False, elem_id="breakdown-table")
    with gr.Accordion("Head to head", open=True, elem_id="results-section-paired"):
        gr.Markdown("A paired test of the per-prompt mean scores (Wilcoxon signed-rank; sign test beside it), then "
                    "the raters' stated preferences (win rate = won / pairs with a preference).")
        paired = gr.Dataframe(interactive=False, wrap=True, elem_id="paired-table")
        preferences = gr.Dataframe(interactive=False, elem_id="preference-table")
    with gr.Accordion("Agreement and bias checks", open=False, elem_id="results-section-bias"):
        agreement = gr.Markdown(elem_id="results-agreement")
        position = gr.Dataframe(interactive=False, elem_id="bias-table")
        lengths = gr.Dataframe(interactive=False, elem_id="length-table")
    with gr.Accordion("Automatic metrics and the runs behind each model", open=True,
                      elem_id="results-section-metrics"):
        gr.Markdown("Exact match and answer contained compare the normalised reply with the reference answer; "
                    "BLEU (sacrebleu) and ROUGE-L (F1) are 0–100. Only replies with a reference count for them.")
        automatic = gr.Dataframe(interactive=False, elem_id="metrics-table")
        automatic_by = gr.Dataframe(interactive=False, elem_id="metrics-by-table", visible=False)
        runs = gr.Dataframe(interactive=False, wrap=True, elem_id="results-runs")
    with gr.Accordion("Automatic check beside the human scores", open=True, elem_id="results-section-checks"):
        gr.Markdown("The check made right after generation (the evaluation's own checks, answer accuracy, replies "
                    "cut at the token cap), and how well its headline figure agrees with the raters' mean scores "
                    "(Spearman).")
        check_note = gr.Markdown(elem_id="results-checks-note")
        check_table = gr.Dataframe(interactive=False, elem_id="results-checks")
    with gr.Accordion("Raters: who rated, and leaving one out", open=False, elem_id="results-raters-panel"):
        gr.Markdown("Every rater of this evaluation: scores given, their mean, when, and how many rater names "
                    "came from the same address. Excluding a rater leaves their ratings stored (and the decision "
                    "recorded) but out of every table above and of the exports; Include brings them back.")
        rater_table = gr.Dataframe(interactive=False, elem_id="results-rater-table")
        with gr.Row():
            rater_name = gr.Textbox(label="Rater", placeholder="a name from the table", scale=2,
                                    elem_id="results-rater-name")
            reason = gr.Textbox(label="Why (kept in the audit)", scale=2, elem_id="results-rater-reason")
            exclude = gr.Button("Exclude", variant="stop", scale=1, elem_id="results-rater-exclude")
            include = gr.Button("Include", scale=1, elem_id="results-rater-include")
        rater_note = gr.Markdown(elem_id="results-rater-note")
    gr.Markdown("### Exports\nThe Markdown report, the raw ratings (CSV), preference pairs for the next run "
                "(JSONL prompt/chosen/rejected), the low-rated replies to rewrite (CSV: fill `completion`, then "
                "import it on the Dataset tab) and a copy of the whole ratings database.")
    export = gr.Button("Build the export files", elem_id="results-export")
    export_note = gr.Markdown(elem_id="results-export-note")
    files = gr.File(label="Exports", file_count="multiple", interactive=False, elem_id="results-files")

    def gathered(eval_id, cutoff):
        return exports.gather(store, int(eval_id), int(cutoff or stats.SUCCESS), _runs_of(store, trainer, eval_id))

    def show(eval_id, cutoff, with_raters, by_value):
        evals = eval_choices(store)
        if eval_id is None and evals:
            eval_id = evals[0][1]
        try:  # the list is filled by the page; a script may send anything
            eval_id = int(eval_id) if eval_id is not None else None
        except (TypeError, ValueError):
            eval_id = -1
        if eval_id is None or store.evaluation(int(eval_id)) is None:
            empty = pd.DataFrame()
            return [gr.update(choices=evals, value=None), "No evaluation yet: build one on the Compare tab.",
                    empty, None, empty, gr.update(choices=[], value=None), empty, empty, empty, "", empty, empty,
                    empty, gr.update(value=empty, visible=False), empty, "", empty]
        r = gathered(eval_id, cutoff)
        choices = list(r.breakdowns)
        by_value = by_value if by_value in choices else (choices[0] if choices else None)
        prompts = r.replies.drop_duplicates("position") if not r.replies.empty else None
        table = stats.per_prompt_table(r.scores, prompts, raters=bool(with_raters)) if with_raters else r.per_prompt
        return [gr.update(choices=evals, value=eval_id), "\n".join(f"- {line}" for line in r.summary()),
                exports.display(r.success), (int(eval_id), int(cutoff or stats.SUCCESS), time.time()),
                exports.display(table), gr.update(choices=choices, value=by_value),
                exports.display(r.breakdowns[by_value]) if by_value else pd.DataFrame(),
                exports.display(r.paired.drop(columns=["in words"])), exports.display(r.preferences),
                r.agreement["note"],
                exports.display(r.position_bias), exports.display(r.lengths), exports.display(r.automatic),
                gr.update(value=exports.display(r.automatic_by) if r.automatic_by is not None else None,
                          visible=r.automatic_by is not None),
                exports.display(r.runs), "\n\n".join(r.check_lines()),
                rchecks.display(r.checks.table) if r.checks is not None else pd.DataFrame()]

    def on_export(eval_id, cutoff):
        if eval_id is None:
            return "⚠️ Choose an evaluation first.", None
        r = gathered(eval_id, cutoff)
        try:
            paths = exports.write_exports(r, Path(tempfile.mkdtemp(prefix="tuner-results-")), store.path)
        except OSError as exc:  # StorageError: names the file and the problem
            return f"⚠️ {exc}", None
        return (f"Built {len(paths)} files for evaluation #{eval_id} (success at {r.threshold} or more).",
                [str(p) for p in paths])

    def rater_rows(eval_id):
        if eval_id is None or store.evaluation(int(eval_id)) is None:
            return pd.DataFrame()
        frame = store.raters(int(eval_id))
        frame["excluded"] = frame["excluded"].map({True: "excluded", False: ""})
        return frame.rename(columns={"mean_score": "mean score", "first_at": "first", "last_at": "last",
                                     "names_from_address": "names from its address"})

    def set_rater(excluded: bool):
        def handler(eval_id, name, why):
            if eval_id is None:
                return rater_rows(eval_id), "⚠️ Choose an evaluation first."
            try:
                changed = store.set_excluded(int(eval_id), name, excluded, (why or "").strip())
            except (RatingError, StorageError) as exc:
                return rater_rows(eval_id), f"⚠️ {exc}"
            word = "excluded from" if excluded else "included in"
            text = (f"{clean_rater(name)!r} is now {word} this evaluation's statistics; the tables are recomputed."
                    if changed else f"{clean_rater(name)!r} was already {word} them.")
            return rater_rows(eval_id), text
        handler.__name__ = "on_exclude_rater" if excluded else "on_include_rater"
        return handler

    inputs = [eval_pick, threshold, raters, by]
    outputs = [eval_pick, summary, success, plots_key, per_prompt, by, breakdown, paired, preferences, agreement,
               position, lengths, automatic, automatic_by, runs, check_note, check_table]
    refresh.click(show, inputs, outputs).then(rater_rows, eval_pick, rater_table)
    for control in inputs:
        control.input(show, inputs, outputs).then(rater_rows, eval_pick, rater_table)
    eval_pick.change(rater_rows, eval_pick, rater_table)
    for button, excluded in ((exclude, True), (include, False)):
        button.click(set_rater(excluded), [eval_pick, rater_name, reason], [rater_table, rater_note],
                     api_name="exclude_rater" if excluded else "include_rater").then(show, inputs, outputs)
    export.click(on_export, [eval_pick, threshold], [export_note, files])
    return show, inputs, outputs


def _runs_of(store: Store, trainer: RunManager | None, eval_id) -> dict[str, dict | None]:
    """The run record behind each fine-tuned variant of an evaluation (None once deleted)."""
    if trainer is None or eval_id is None:
        return {}
    records = {r["run_id"]: r for r in trainer.runs()}
    return {v["name"]: records.get(v["name"]) for v in store.variants(int(eval_id)) if v["kind"] != "base"}


def _results_plots(store: Store, trainer: RunManager | None, key: gr.State) -> None:
    """Score distribution, success rate with interval bars, and the runs' loss curves.

    Rebuilt whenever `key` changes (evaluation, threshold or a refresh), never
    updated in place: a Gradio 6 LinePlot first given an empty frame never
    draws, and a color series that first appears in an update is never drawn.
    The first two are Vega-Lite specs drawn by gr.Plot (BarPlot has neither
    grouped bars nor error bars).
    """

    @gr.render(inputs=key)
    def plots(current):
        if not current:
            return
        eval_id, cutoff, _ = current
        scores = store.ratings_frame(eval_id)
        if scores.empty:
            gr.Markdown("The plots appear once there are ratings.", elem_id="results-no-plots")
        else:
            with gr.Row():
                gr.Plot(_vega(_distribution_spec(stats.score_distribution(scores))), show_label=False,
                        elem_id="results-distribution")
                gr.Plot(_vega(_interval_spec(stats.success_table(scores, cutoff), cutoff)), show_label=False,
                        elem_id="results-success-plot")
        curves = [curve_frame(read_metrics(Path(run["path"])), short_label(run_label(run)))
                  for run_id, run in _runs_of(store, trainer, eval_id).items() if run]
        curves = [c for c in curves if c is not None]
        if curves:
            gr.LinePlot(pd.concat(curves, ignore_index=True), x="step", y="loss", color="series", height=280,
                        title="Loss curves of the evaluation's runs", elem_id="results-loss")


_vega = vega_plot  # (tuner.ui_train) one way to hand gr.Plot a Vega-Lite spec




def _distribution_spec(distribution: pd.DataFrame) -> dict:
    order = list(dict.fromkeys(distribution["model"]))
    return {"$schema": VEGA_LITE, "title": "Score distribution per model", "width": 380, "height": 220,
            "data": {"values": distribution.to_dict("records")},
            "mark": {"type": "bar", "tooltip": True},
            "encoding": {"x": {"field": "score", "type": "ordinal", "title": "score"},
                         "xOffset": {"field": "model", "sort": order},
                         "y": {"field": "share", "type": "quantitative", "title": "share of the model's ratings",
                               "axis": {"format": "%"}},
                         "color": {"field": "model", "type": "nominal", "sort": order}}}


def _interval_spec(success: pd.DataFrame, cutoff: int) -> dict:
    order = list(success["model"])
    rows = success[["model", "rate", "rate low", "rate high", "success"]].rename(
        columns={"rate low": "low", "rate high": "high"}).to_dict("records")
    y = {"field": "model", "type": "nominal", "sort": order, "title": None}
    scale = {"domain": [0, 1]}
    return {"$schema": VEGA_LITE, "title": f"Success rate (scored {cutoff}+) with 95% intervals",
            "width": 380, "height": 40 + 40 * len(rows), "data": {"values": rows},
            "layer": [
                {"mark": {"type": "rule", "strokeWidth": 2},
                 "encoding": {"y": y, "x": {"field": "low", "type": "quantitative", "scale": scale,
                                            "axis": {"format": "%"}, "title": "success rate"},
                              "x2": {"field": "high"}, "color": {"field": "model", "sort": order, "legend": None}}},
                {"mark": {"type": "point", "filled": True, "size": 90, "tooltip": True},
                 "encoding": {"y": y, "x": {"field": "rate", "type": "quantitative", "scale": scale},
                              "color": {"field": "model", "sort": order, "legend": None}}}]}
