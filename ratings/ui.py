"""The Compare and Results tabs. Only UI code imports gradio.

Blindness: the browser receives the prompt and the two reply texts; which
variant is on which side lives in SQLite (assignments) and the session's
server-side gr.State holds only the assignment id. The names are sent only
in the reveal, after `Store.rate_pair` has committed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import gradio as gr
import pandas as pd

from ratings import stats
from ratings.store import RatingError, Store
from tuner import data as tdata
from tuner.generate import GenSettings, Generator
from tuner.runs import RunManager
from tuner.ui_train import finished_runs

RUBRIC = ("**Helpfulness, 1–5:** 5 = usable as is · 4 = small edits · 3 = needs work · "
          "2 = mostly unhelpful · 1 = wrong or harmful. A score of 4 or more counts as a success.")
SCORES = [1, 2, 3, 4, 5]


def _eval_choices(store: Store) -> list[tuple[str, int]]:
    return [(f"#{e['id']} {e['name']} ({e['n_prompts']} prompts)", e["id"]) for e in store.evaluations()]


def held_out_prompts(run: dict) -> list[dict]:
    """The test split of the run's dataset: the prompts it never trained on."""
    config = run["config"]
    loaded = tdata.load_jsonl(Path(config["dataset"]))
    test = tdata.splits(loaded.rows, config.get("validation_fraction", 0.0), config["test_fraction"],
                        config["seed"])["test"]
    # one line per prompt in the textbox: a multi-line prompt is shown on one
    # line and mapped back to its full conversation when generating
    return [{"text": " ".join(tdata.last_user_text(r).split()), "messages": tdata.prompt_of(r),
             "reference": r["messages"][-1]["content"]} for r in test]


def compare_tab(trainer: RunManager, generator: Generator, store: Store, rng: random.Random):
    with gr.Row():
        run_pick = gr.Dropdown(choices=finished_runs(trainer), label="Fine-tuned run", scale=3,
                               elem_id="compare-run")
        refresh_runs = gr.Button("↻ Runs", scale=0)
    with gr.Row():
        prompts_box = gr.Textbox(lines=5, label="Prompts, one per line", elem_id="compare-prompts", scale=3)
        with gr.Column(scale=1):
            use_held_out = gr.Button("Use the run's held-out prompts", elem_id="use-held-out")
            max_new = gr.Slider(16, 512, value=GenSettings().max_new_tokens, step=16, label="Max new tokens")
            generate = gr.Button("Generate replies", variant="primary", elem_id="generate")
    gen_message = gr.Markdown(elem_id="generate-message")
    held_out = gr.State({})  # prompt text → its conversation and reference answer

    gr.Markdown("### Rate blind")
    with gr.Row():
        eval_pick = gr.Dropdown(choices=_eval_choices(store), label="Evaluation", elem_id="rate-eval", scale=2)
        rater = gr.Textbox(label="Your name", elem_id="rater-name", scale=2)
        begin = gr.Button("Start rating", elem_id="rate-start", scale=1)
    gr.Markdown(RUBRIC)
    progress = gr.Markdown(elem_id="rate-progress")
    prompt_view = gr.Markdown(elem_id="rate-prompt")
    with gr.Row():
        with gr.Column():
            reply_a = gr.Textbox(label="Reply A", lines=8, interactive=False, elem_id="reply-a")
            score_a = gr.Radio(SCORES, label="Score for reply A", elem_id="score-a")
        with gr.Column():
            reply_b = gr.Textbox(label="Reply B", lines=8, interactive=False, elem_id="reply-b")
            score_b = gr.Radio(SCORES, label="Score for reply B", elem_id="score-b")
    submit = gr.Button("Submit ratings", variant="primary", elem_id="rate-submit")
    reveal = gr.Markdown(elem_id="rate-reveal")
    assignment = gr.State(None)  # server-side: the browser never sees the mapping

    def on_refresh_runs():
        return gr.update(choices=finished_runs(trainer))

    def on_held_out(run_id):
        run = _run(trainer, run_id)
        if run is None:
            return gr.update(), {}, "⚠️ Pick a finished run first."
        try:
            prompts = held_out_prompts(run)
        except (OSError, ValueError) as exc:
            return gr.update(), {}, f"⚠️ Cannot read the run's dataset: {exc}"
        if not prompts:
            return gr.update(), {}, "⚠️ This run held out no prompts (test fraction 0); type some instead."
        return ("\n".join(p["text"] for p in prompts), {p["text"]: p for p in prompts},
                f"{len(prompts)} held-out prompts from `{Path(run['config']['dataset']).name}`.")

    def on_generate(run_id, text, held, max_new_tokens, progress_bar=gr.Progress()):
        run = _run(trainer, run_id)
        if run is None:
            return "⚠️ Pick a finished run to compare with its base model.", gr.update()
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if not lines:
            return "⚠️ Enter at least one prompt (one per line).", gr.update()
        prompts = [held.get(line) or {"text": line, "messages": [{"role": "user", "content": line}]}
                   for line in lines]
        settings = GenSettings(max_new_tokens=int(max_new_tokens))
        base_model = run["config"]["base_model"]
        conversations = [p["messages"] for p in prompts]
        done = {"n": 0}

        def tick(n, total, stage):
            progress_bar((done["n"] + n) / (2 * len(prompts)), desc=f"{stage}: {n}/{total}")

        try:
            progress_bar(0, desc="loading model")
            base = generator.generate(base_model, conversations, settings,
                                      progress=lambda n, t: tick(n, t, "base"))
            done["n"] = len(prompts)
            tuned = generator.generate(base_model, conversations, settings,
                                       adapter=(run["run_id"], Path(run["path"]) / "adapter"),
                                       progress=lambda n, t: tick(n, t, "fine-tuned"))
            eval_id = store.create_evaluation(f"{run['run_id']} vs base", base_model, run["run_id"],
                                              prompts, settings=json.loads(json.dumps(settings.__dict__)))
            for prompt, b, t in zip(store.prompts(eval_id), base, tuned):
                store.add_reply(prompt["id"], "base", base_model, b.text, b.settings, b.latency_s, b.new_tokens)
                store.add_reply(prompt["id"], "tuned", run["run_id"], t.text, t.settings, t.latency_s,
                                t.new_tokens)
        except Exception as exc:  # a bad model, adapter or disk must not take the app down
            return f"⚠️ Generation failed: {type(exc).__name__}: {exc}", gr.update()
        seconds = sum(r.latency_s for r in base + tuned)
        return (f"Generated {len(prompts)} × 2 replies in {seconds:.1f} s. Enter your name and press "
                "**Start rating**.", gr.update(choices=_eval_choices(store), value=eval_id))

    def serve(eval_id, name):
        empty = (None, "", "", None, None)
        if eval_id is None:
            return ("⚠️ Generate replies or pick an evaluation first.", *empty, "")
        try:
            pair = store.next_pair(int(eval_id), name, rng)
        except RatingError as exc:
            return (f"⚠️ {exc}", *empty, "")
        if pair is None:
            return ("✅ You have rated every pair in this evaluation. See the Results tab.", *empty, "")
        return (f"Pair {pair['done'] + 1} of {pair['total']}", pair["assignment_id"],
                f"**Prompt:** {pair['prompt']}", pair["reply_a"], pair["reply_b"], None, None, "")

    def on_submit(assignment_id, name, a, b):
        if assignment_id is None:
            return "⚠️ Press Start rating to get a pair first.", gr.update()
        try:
            result = store.rate_pair(assignment_id, name, a, b)
        except RatingError as exc:
            return f"⚠️ {exc}", gr.update()
        # committed: now, and only now, say which reply was which
        text = (f"Saved. **Reply A** was **{_label(result['a'], result['a_model'])}** (you gave {result['score_a']}); "
                f"**Reply B** was **{_label(result['b'], result['b_model'])}** (you gave {result['score_b']}).")
        return text, None

    refresh_runs.click(on_refresh_runs, None, run_pick)
    use_held_out.click(on_held_out, run_pick, [prompts_box, held_out, gen_message])
    generate.click(on_generate, [run_pick, prompts_box, held_out, max_new], [gen_message, eval_pick])
    outputs = [progress, assignment, prompt_view, reply_a, reply_b, score_a, score_b, reveal]
    begin.click(serve, [eval_pick, rater], outputs)
    next_pair = gr.Button("Next pair", elem_id="rate-next")
    submit.click(on_submit, [assignment, rater, score_a, score_b], [reveal, assignment])
    next_pair.click(serve, [eval_pick, rater], outputs)
    def refresh():
        return gr.update(choices=finished_runs(trainer)), gr.update(choices=_eval_choices(store))

    return refresh, [run_pick, eval_pick]


def _label(variant: str, model: str) -> str:
    return f"the base model ({model})" if variant == "base" else f"the fine-tuned model (run {model})"


def _run(trainer: RunManager, run_id) -> dict | None:
    return next((r for r in trainer.runs() if r["run_id"] == run_id), None) if run_id else None


def results_tab(store: Store):
    with gr.Row():
        eval_pick = gr.Dropdown(choices=_eval_choices(store), label="Evaluation", elem_id="results-eval", scale=3)
        refresh = gr.Button("↻ Refresh", elem_id="results-refresh", scale=0)
    gr.Markdown(f"A reply succeeds when it is rated **{stats.SUCCESS} or more**.")
    gr.Markdown("### Success rate per model")
    success = gr.Dataframe(interactive=False, elem_id="success-table")
    gr.Markdown("### Per prompt (mean score)")
    per_prompt = gr.Dataframe(interactive=False, wrap=True, elem_id="per-prompt-table")

    def show(eval_id):
        evals = _eval_choices(store)
        if eval_id is None and evals:
            eval_id = evals[0][1]
        if eval_id is None:
            empty = pd.DataFrame()
            return gr.update(choices=evals), empty, empty
        scores = store.ratings_frame(int(eval_id))
        return (gr.update(choices=evals, value=eval_id), stats.success_table(scores),
                stats.per_prompt_table(scores))

    refresh.click(show, eval_pick, [eval_pick, success, per_prompt])
    eval_pick.input(show, eval_pick, [eval_pick, success, per_prompt])
    return show, eval_pick, [eval_pick, success, per_prompt]
