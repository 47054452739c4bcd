"""The Results tab's judge section: a model's 1–5 scores and pair verdicts of an evaluation,
shown beside the raters' and never mixed into them (the engine is `ratings.judge`; the figures
against the raters `ratings.agreement`; the endpoint client `ratings.judge_http`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gradio as gr
import pandas as pd

from ratings import agreement as ragree
from ratings import judge as rjudge
from ratings import judge_http, tables
from ratings.scale import SUCCESS_AT
from ratings.store import Store
from tuner.generate import Generator
from tuner.paths import StorageError

INTRO = ("A model scores every reply with the raters' 1–5 rubric and picks the better reply of every pair, asked "
         "in both orders (so a judge that favours the first reply shows it). It sees the prompt and the reply "
         "texts only, never a model's name. Its scores are stored apart: every table above stays the raters' "
         "alone. **Judge**: a local model folder, `smollm2-135m-instruct`, a Hugging Face Hub id (where the Hub "
         "is reachable), or an OpenAI-compatible endpoint URL (`http://localhost:11434/v1` for Ollama, a vLLM "
         "server…) with its model name and, if it needs a key, the *name* of the environment variable that "
         "holds the key (never the key itself). An endpoint on this machine or a private network (localhost, "
         "10.…, 192.168.…) is refused unless the server sets `TUNER_JUDGE_ALLOW_PRIVATE=1`; redirects are never "
         "followed.")


def judge_section(store: Store, trainer, eval_pick: gr.Dropdown, threshold: gr.Radio) -> tuple[dict, Callable]:
    """Build the section; returns (blank, filled) as the Results tab's sections are: `blank`
    before there is an evaluation, `filled(results, asked)` when `show` fills the tab."""
    models_dir = Path(trainer.models_dir) if trainer is not None else store.path.parent / "models"
    generator = Generator(models_dir)  # the judge's own: the app's keeps the evaluation's model loaded
    with gr.Accordion("Judge (a model's scores, beside the raters')", open=False, elem_id="results-section-judge"):
        gr.Markdown(INTRO)
        with gr.Row():
            source = gr.Textbox(label="Judge: a model or an endpoint URL", scale=3, elem_id="judge-source",
                                placeholder="smollm2-135m-instruct, a model folder, owner/name, or http://…/v1")
            endpoint_model = gr.Textbox(label="Endpoint's model name", placeholder="e.g. llama3.1:8b", scale=2,
                                        elem_id="judge-endpoint-model")
            key_env = gr.Textbox(label="API key: the NAME of the environment variable holding it", scale=2,
                                 placeholder="e.g. OPENAI_API_KEY (empty: no key)", elem_id="judge-key-env")
        warning = gr.Markdown(elem_id="judge-warning")
        run = gr.Button("Run the judge", variant="primary", elem_id="judge-run")
        note = gr.Markdown(elem_id="judge-note")
        picker = gr.Dropdown(choices=[], value=None, label="Judge shown", elem_id="judge-pick")
        summary = gr.Markdown(elem_id="judge-summary")
        success = gr.Dataframe(interactive=False, elem_id="judge-success")
        agreement = gr.Dataframe(interactive=False, elem_id="judge-agreement")
        gr.Markdown(ragree.TRUST_RULE)
        verdicts = gr.Dataframe(interactive=False, elem_id="judge-verdicts")
        pairs = gr.Dataframe(interactive=False, wrap=True, elem_id="judge-pairs")
    view = _View(store, picker, summary, success, agreement, verdicts, pairs)

    def on_pick(eval_id, judge, cutoff):
        return view.fill(eval_id, judge, cutoff)

    def on_judge_typed(text):
        said = rjudge.judge_warning(text)
        return f"⚠️ {said}" if said else ""

    source.input(on_judge_typed, source, warning)
    picker.input(on_pick, [eval_pick, picker, threshold], view.outputs)
    run.click(_runner(store, models_dir, generator, view, note), [eval_pick, source, endpoint_model, key_env, threshold],
              [note, *view.outputs])
    return view.blank(), lambda r, asked: view.fill(asked.eval_id, None, asked.cutoff, r.scores)


class _View:
    """The judge's tables for one evaluation and judge."""

    def __init__(self, store: Store, picker, summary, success, agreement, verdicts, pairs):
        self.store, self.picker, self.summary = store, picker, summary
        self.success, self.agreement, self.verdicts, self.pairs = success, agreement, verdicts, pairs
        self.outputs = [picker, summary, success, agreement, verdicts, pairs]

    def blank(self, text: str = "") -> dict:
        return {self.picker: gr.update(choices=[], value=None), self.summary: text, self.success: pd.DataFrame(),
                self.agreement: pd.DataFrame(), self.verdicts: pd.DataFrame(), self.pairs: pd.DataFrame()}

    def fill(self, eval_id, judge: str | None, cutoff, human: pd.DataFrame | None = None) -> dict:
        """The tables of `judge` (None: the latest judge of this evaluation)."""
        try:
            eval_id = int(eval_id)
        except (TypeError, ValueError):
            return self.blank()
        names = rjudge.judges(self.store, eval_id)
        if not names:
            return self.blank("No judge has scored this evaluation yet.")
        judge = judge if judge in names else names[0]
        r = rjudge.report(self.store, eval_id, judge, int(cutoff or SUCCESS_AT), human)
        return {self.picker: gr.update(choices=names, value=judge),
                self.summary: "\n".join(f"- {line}" for line in r.sentences()),
                self.success: tables.display(r.success),
                self.agreement: tables.display(ragree.agreement_table(r.agreement)),
                self.verdicts: r.verdicts,
                self.pairs: r.pairs.drop(columns=["comparison_id"]).rename(columns={"position": "#"})}


def _runner(store: Store, models_dir: Path, generator: Generator, view: _View, note: gr.Markdown):
    def on_run_judge(eval_id, source, endpoint_model, key_env, cutoff, progress_bar=gr.Progress()):
        if eval_id is None or store.evaluation(_int(eval_id)) is None:
            return {note: "⚠️ Choose an evaluation first."}
        progress_bar(0, desc="preparing the judge (a local model loads first)")
        try:
            judge = rjudge.make_judge(source, models_dir, endpoint_model, key_env, generator=generator,
                                      allow_private=judge_http.private_allowed_by_env())
        except judge_http.JudgeError as exc:
            return {note: f"⚠️ {exc}"}

        def tick(done, total):
            progress_bar(done / max(1, total), desc=f"judging: {done} of {total} answers")

        try:
            counts = rjudge.run_judge(store, _int(eval_id), judge, tick)
        except (judge_http.JudgeError, StorageError) as exc:
            return {note: f"⚠️ {exc}"}
        except Exception as exc:  # a bad model or server must not take the app down
            return {note: f"⚠️ The judge failed: {type(exc).__name__}: {exc}"}
        text = (f"{judge.name} scored {counts['scored']} of {counts['replies']} replies and judged "
                f"{counts['pairs']} pairs in both orders ({counts['decided']} of {counts['verdicts']} answers "
                "named a winner or a tie). Stored beside the raters' scores; the tables above are unchanged.")
        if judge.warning:
            text += f"\n\n⚠️ {judge.warning}"
        return {note: text, **view.fill(eval_id, judge.name, cutoff)}

    return on_run_judge


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1
