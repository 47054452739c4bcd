"""The Dataset tab: import, edit, filter, split, expand, inspect and export.

The tab works on a draft: the chosen version's rows, held per browser session
in a gr.State. The row editor and accepted paraphrases change the draft; every
Save writes a new version (tdata.save_version), so nothing saved before is
ever changed. The work itself is done by the engine modules (importers,
editing, shaping, paraphrase); the handlers here translate between widgets and them.

Each part of the tab (import, the draft's view, edit, filter, split, expand,
inspect and export) has its own builder, which lays it out and wires it; they
share a DatasetTab: the draft, the components that show it, and its views.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr
import pandas as pd

from tuner import data as tdata
from tuner import editing, models
from tuner import importers as imp
from tuner import paraphrase
from tuner import shaping as sh
from tuner.config import TrainConfig
from tuner.generate import GenSettings, Generator
from tuner.paths import StorageError, atomic_write_text
from tuner.ui.access import forget_upload
from tuner.ui.charts import bar_spec, chart

TABLE_COLUMNS = ["#", "user", "assistant", "turns", "metadata"]
TABLE_WIDTHS = ["5%", "35%", "40%", "6%", "14%"]
TABLE_LIMIT = 500  # rows sent to the browser; the counts always cover them all
SHAPES = {"auto-detect": None, "messages": "messages", "ShareGPT": "sharegpt", "Alpaca": "alpaca",
          "Dolly": "dolly", "prompt/completion": "prompt_completion", "question/answer": "question_answer",
          "custom mapping": "mapping"}
NO_COLUMN = "(none)"
DEFAULT_DATASET = "starter: polite_assistant"  # the small set the quick start trains on
PROPOSAL_COLUMNS = ["add", "row", "original", "paraphrase", "shared words", "check"]
FLAG_LABELS = {"empty": "empty or unchanged", "known": "already in the draft",
               "meta": "talks about the rewording instead of being one",
               "drift": "drifting off-topic (few shared words)"}
CHANGE_WORDS = {"paraphrase": ("paraphrase", "added"), "add": ("row", "added"), "replace": ("row", "replaced"),
                "delete": ("row", "deleted")}
NEW_NAME = "my-dataset"  # the name a dataset started from scratch is saved under, unless changed


def starter_files() -> list[str]:
    """datasets/ files the chooser cannot list (it lists chat JSONL): e.g. a CSV to map."""
    return sorted(p.name for p in tdata.STARTER_DATASETS.iterdir()
                  if p.suffix.lower() in imp.SUFFIXES and p.suffix.lower() != ".jsonl")


@dataclass
class Draft:
    """The rows the tab works on, and how far they are from the saved version."""

    label: str | None = None
    rows: list[dict] = field(default_factory=list)
    changes: int = 0  # unsaved edits
    rev: int = 0  # bumped on every change: the key of the cached token lengths
    log: tuple[tuple[str, int], ...] = ()  # (kind, rows) per unsaved change, for the version note

    def changed(self, rows: list[dict], kind: str = "edit", count: int = 1) -> Draft:
        return replace(self, rows=rows, changes=self.changes + 1, rev=self.rev + 1,
                       log=(*self.log, (kind, count)))

    def count(self, kind: str) -> int:
        return sum(n for k, n in self.log if k == kind)

    def describe(self) -> str:
        """What the unsaved changes did, e.g. "16 paraphrases added, 1 row replaced"."""
        totals = Counter()
        for kind, n in self.log:
            totals[kind] += n
        parts = []
        for kind, n in totals.items():
            noun, verb = CHANGE_WORDS.get(kind, ("change", "made"))
            parts.append(f"{n} {noun}{'' if n == 1 else 's'} {verb}")
        return ", ".join(parts) or f"{self.changes} change(s)"


def table_frame(rows: list[dict]) -> pd.DataFrame:
    shown = tdata.preview(rows[:TABLE_LIMIT])
    return pd.DataFrame([[i + 1, *r] for i, r in enumerate(shown)], columns=TABLE_COLUMNS)


def problems_text(problems: list[str], limit: int = 20) -> str:
    if not problems:
        return ""
    lines = "\n".join(f"- {p}" for p in problems[:limit])
    more = f"\n- … and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"\n\n⚠️ {len(problems)} skipped:\n{lines}{more}"


def versions_text(datasets_dir: Path, draft: Draft) -> str:
    path = tdata.available(datasets_dir).get(draft.label)
    if path is None:
        return f"**{draft.changes} unsaved change(s)**: press *Save as a new version* to keep them." \
            if draft.changes else ""
    if draft.label.startswith("starter: "):
        text = "A starter dataset: it stays as it is; what you save becomes `saved:` versions of it."
    else:
        parts = []
        for p in tdata.versions(path):
            note = tdata.note_of(p)
            note = note if len(note) <= 160 else note[:159] + "…"
            this = " ← this one" if p == path else ""
            parts.append(f"`{p.stem}`" + (f": {note}" if note else "") + this)
        text = "**Versions:** " + " · ".join(parts)
    if draft.changes:
        text += (f"\n\n**{draft.changes} unsaved change(s)** in the draft: press *Save as a new version* "
                 "to keep them.")
    return text


def filter_spec(words, mode, match, whole, fields, column, values, min_tok, max_tok, dedupe, sample, seed):
    kw = sh.Keywords(tuple(sh.parse_words(words)), exclude=mode == "exclude", require_all=match == "all",
                     whole_word=bool(whole), fields=tuple(fields or ()))
    column = column if column and column != NO_COLUMN else None
    return sh.FilterSpec(keywords=kw, column=column, values=tuple(values or ()) if column else (),
                         min_tokens=int(min_tok or 0), max_tokens=int(max_tok or 0), dedupe=bool(dedupe),
                         sample=int(sample or 0), seed=int(seed or 0))


def split_spec(train, validation, test, seed, stratify) -> sh.SplitSpec:
    return sh.SplitSpec(int(train or 0), int(validation or 0), int(test or 0), int(seed or 0),
                        stratify if stratify and stratify != NO_COLUMN else None)


def proposals_frame(proposals: list[dict]) -> pd.DataFrame:
    """One line per proposal: ticked when it looks usable, else flagged with why not."""
    lines = []
    for p in proposals:
        flag = p.get("flag", "")
        check = "✓" if not flag else "⚠️ " + FLAG_LABELS.get(flag, flag)
        shared = f"{p['similarity']:.0%}" if p["paraphrase"] and "similarity" in p else ""
        lines.append([not flag, p["row"] + 1, p["original"], p["paraphrase"], shared, check])
    return pd.DataFrame(lines, columns=PROPOSAL_COLUMNS)


def proposals_summary(found: list[dict], asked: int, rows: list[dict], model_name: str) -> str:
    """How many proposals were made (and why fewer than asked), how many look usable, and why the rest not."""
    text = f"**{len(found)} proposal(s)** from `{model_name}`"
    if len(found) < asked:
        sources = len(paraphrase.source_rows(rows))
        text += f" (you asked for {asked}, but the draft has only {sources} original row(s), one proposal each"
        added = len(rows) - sources
        text += f"; its {added} added paraphrase(s) are not paraphrased again)" if added else ")"
    flags = Counter(p["flag"] for p in found)
    text += f": **{flags.pop('', 0)} look usable** and are ticked"
    if flags:
        text += "; not ticked: " + ", ".join(f"{n} {FLAG_LABELS.get(f, f)}" for f, n in flags.items()) + \
            " (tick any that are fine)"
    return text + ". Review them (you can edit them), then add the ticked ones."


def accepted(frame: pd.DataFrame | None) -> list[tuple[int, str, str]]:
    """(row index, original, text) of each ticked proposal with a paraphrase."""
    if frame is None or len(frame) == 0:
        return []
    out = []
    for add, row, original, text in frame[PROPOSAL_COLUMNS[:4]].itertuples(index=False):
        if str(add).lower() in ("true", "1") and str(text or "").strip() and str(row).strip():
            out.append((int(float(row)) - 1, str(original or ""), str(text)))
    return out



def _turn_list(turns) -> list[list]:
    if turns is None:
        return []
    if isinstance(turns, pd.DataFrame):
        return turns.values.tolist()
    return [list(t) for t in turns]


def turns_frame(turns: list[list]) -> pd.DataFrame:
    return pd.DataFrame(turns, columns=editing.TURN_COLUMNS)


def on_check(system_, turns_, meta_):
    if editing.is_blank(system_, _turn_list(turns_), meta_):
        return ""  # nothing typed yet: nothing to warn about (as when the page opens)
    _row, problems = editing.build_row(system_, _turn_list(turns_), meta_)
    return "✓ Ready to add or replace." if not problems else "⚠️ " + "; ".join(problems)


def on_add_turn(turns_):
    return turns_frame(_turn_list(turns_) + [["", ""]])


def on_column(draft: Draft, name):
    if not name or name == NO_COLUMN:
        return gr.update(choices=[], value=[])
    counts = sh.value_counts(draft.rows, name)
    return gr.update(choices=[(f"{v} ({n})", v) for v, n in counts], value=[])


def on_top(draft: Draft, name, n):
    if not name or name == NO_COLUMN:
        return gr.update()
    return gr.update(value=sh.top_values(draft.rows, name, int(n or 0)))


def on_split(draft: Draft, *controls):
    try:
        spec = split_spec(*controls)
    except ValueError as exc:
        return f"⚠️ {exc}", None
    labels = sh.assign_splits(draft.rows, spec)
    stored = " This version already has a stored split; saving makes a new one." \
        if tdata.has_stored_split(draft.rows) else ""
    return f"{spec.describe().capitalize()}: counts per part below.{stored}", \
        sh.split_table(draft.rows, labels, spec.stratify)


def foreign_proposals(draft: Draft, chosen: list[tuple[int, str, str]]) -> bool:
    """Whether any ticked proposal was made for a row the draft no longer has as it was."""
    return any(not 0 <= i < len(draft.rows) or tdata.last_user_text(draft.rows[i]).strip() != original.strip()
               for i, original, _ in chosen)


# what an import of each kind imports, from its handler's arguments (None where the handler refuses anyway)
IMPORT_NAMES = {"upload": lambda file, *_: file and Path(file if isinstance(file, str) else file.name).name,
                "starter": lambda name, *_: name or None,
                "reimport": lambda path, *_: path and Path(path).name,
                "hub": lambda dataset_id, *_: dataset_id or None}


@dataclass(eq=False)
class DatasetTab:
    """What the sections share: where datasets and models are, the base model, the draft and the
    components that show it, and the views they all answer with (dicts keyed by component).

    The import above the table writes to what is placed below it (the table, and the filter's and
    split's pickers, reset for each version), so these components are built unrendered and each
    section renders those it lays out."""

    datasets_dir: Path
    models_dir: Path
    model_input: list  # [the base-model picker], or [] on a page without one
    generator: Generator | None  # made on the first proposal where the page gives none
    chooser: gr.Dropdown
    name_box: gr.Textbox
    message: gr.Markdown
    discard_btn: gr.Button
    versions_md: gr.Markdown
    table: gr.Dataframe
    kw_fields: gr.CheckboxGroup
    column: gr.Dropdown
    values: gr.Dropdown
    stratify: gr.Dropdown
    draft_state: gr.State
    lengths_state: gr.State  # {"key": [...], "lengths": [...]}: token lengths of the draft
    # {"label", "rev", "redo"}: what was refused for the draft's unsaved changes (a version to open, None: a
    # new dataset; "redo": an import, (kind, args)), done by the discard button while the draft stays as it was
    pending_state: gr.State
    # the version chosen last, kept on the server so a reload reopens it: the studio has one owner,
    # and a gr.BrowserState reads localStorage, which a browser denies to a page framed by another
    # site (a Space) — the whole page then failed to load
    remembered: "LastChoice"
    tokenizers: dict = field(default_factory=dict)  # model location → tokenizer, loaded once
    draft_events: list = field(default_factory=list)  # events that change the draft: the counts follow each
    discard_event: object = None  # the discard button's click, which may start a new, empty dataset

    @classmethod
    def create(cls, datasets_dir: Path, model_picker, models_dir: Path | None, generator: Generator | None):
        datasets_dir = Path(datasets_dir)
        return cls(
            datasets_dir=datasets_dir,
            models_dir=Path(models_dir) if models_dir else datasets_dir.parent / "models",
            model_input=[model_picker] if model_picker is not None else [], generator=generator,
            # built empty (saved names are the owner's) and filled by the page's load; any value is
            # let through to the handlers, which look it up among the datasets that exist
            chooser=gr.Dropdown(choices=[], value=None, allow_custom_value=True, label="Dataset (version)",
                                elem_id="dataset-chooser", scale=3, render=False),
            name_box=gr.Textbox(label="Save new versions as", elem_id="dataset-name", scale=2, render=False,
                                info="A new version never overwrites: faq → faq-v2 → faq-v3 …"),
            message=gr.Markdown(elem_id="dataset-message", render=False),
            discard_btn=gr.Button("Drop the unsaved changes", variant="stop", visible=False,
                                  elem_id="dataset-discard", render=False),
            versions_md=gr.Markdown(elem_id="dataset-versions", render=False),
            table=gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, wrap=True, elem_id="dataset-table",
                               max_height=420, max_chars=300, column_widths=TABLE_WIDTHS, render=False),
            kw_fields=gr.CheckboxGroup(list(sh.TEXT_FIELDS), value=["user", "assistant"], label="Search in",
                                       elem_id="filter-fields", render=False),
            column=gr.Dropdown([NO_COLUMN], value=NO_COLUMN, label="Metadata column", elem_id="filter-column",
                               render=False),
            values=gr.Dropdown([], value=[], multiselect=True, label="Values to keep", elem_id="filter-values",
                               scale=3, render=False),
            stratify=gr.Dropdown([NO_COLUMN], value=NO_COLUMN, label="Stratify by", elem_id="split-stratify",
                                 render=False),
            draft_state=gr.State(Draft()), lengths_state=gr.State(None), pending_state=gr.State(None),
            remembered=LastChoice(datasets_dir))

    @property
    def view_outputs(self) -> list:
        return [self.message, self.table, self.draft_state, self.versions_md, self.name_box, self.kw_fields,
                self.column, self.values, self.stratify]

    @property
    def with_chooser(self) -> list:
        return [self.chooser, *self.view_outputs]

    @property
    def guarded(self) -> list:
        return [self.pending_state, self.discard_btn]

    def recount(self, event):
        """`event` changes the draft: the filter's and split's counts are made again after it."""
        self.draft_events.append(event)

    def picked(self, rest: tuple, default=None):
        """(the base model, the other inputs): the picker's value comes first where the page has one."""
        return (rest[0], rest[1:]) if self.model_input else (default, rest)

    # --- views -----------------------------------------------------------------------
    def view(self, draft: Draft, text: str, reset: bool, rename: bool = False) -> dict:
        """The view for a draft; `reset` (another version chosen) also resets the pickers
        and the name to save as; `rename` (a new version saved) the name only."""
        columns = sh.metadata_columns(draft.rows)
        strata = [c for c in columns if c != tdata.SPLIT_FIELD]
        shown = f" (the first {TABLE_LIMIT} are shown)" if len(draft.rows) > TABLE_LIMIT else ""
        out = {self.message: text + shown, self.table: table_frame(draft.rows), self.draft_state: draft,
               self.versions_md: versions_text(self.datasets_dir, draft)}
        if reset or rename:
            out[self.name_box] = tdata.version_of(draft.label.split(": ", 1)[1])[0] if draft.label else ""
        if reset:
            return {**out, self.kw_fields: gr.update(choices=[*sh.TEXT_FIELDS, *columns], value=["user", "assistant"]),
                    self.column: gr.update(choices=[NO_COLUMN, *columns], value=NO_COLUMN),
                    self.values: gr.update(choices=[], value=[]),
                    self.stratify: gr.update(choices=[NO_COLUMN, *strata], value=NO_COLUMN)}
        return {**out, self.kw_fields: gr.update(choices=[*sh.TEXT_FIELDS, *columns]),
                self.column: gr.update(choices=[NO_COLUMN, *columns]),
                self.stratify: gr.update(choices=[NO_COLUMN, *strata])}

    def show(self, label):
        path = tdata.available(self.datasets_dir).get(label)
        if path is None:
            return self.view(Draft(), "Pick a dataset or import one.", reset=True)
        result = tdata.load_jsonl(path)
        self.remembered.keep(label)  # here, not only on the dropdown's change: a reload at once must find it
        text = f"**{len(result.rows)} rows** in `{path.name}` ({label})." + problems_text(result.problems)
        return self.view(Draft(label, result.rows), text, reset=True)

    def new_view(self) -> dict:
        return {**self.view(Draft(), "A new, empty dataset: add rows with the editor, then save it.", reset=True),
                self.name_box: NEW_NAME}

    def refused(self, text: str) -> dict:
        """Only why nothing changed."""
        return {self.message: f"⚠️ {text}"}

    def settled(self) -> dict:
        """Nothing refused is waiting for the discard button."""
        return {self.pending_state: None, self.discard_btn: gr.update(visible=False)}

    def keep_draft(self, draft: Draft, label: str | None, redo=None) -> dict:
        """Keeps a draft with unsaved changes instead of opening `label` (None: a new, empty
        dataset) or, with `redo` (what, kind, args), instead of an import."""
        where = f"to `{draft.label}`" if draft.label else "(a new dataset)"
        what = redo[0] if redo else f"open {label}" if label else "start a new, empty dataset"
        text = (f"The draft has **{draft.changes} unsaved change(s)** {where}, so it is kept: press *Save as a "
                f"new version* to keep them, or *Drop the unsaved changes and {what}*.")
        return {**self.refused(text), self.pending_state: {"label": label, "rev": draft.rev, "redo": redo and redo[1:]},
                self.discard_btn: gr.update(visible=True, value=f"Drop the unsaved changes and {what}")}

    def saved(self, path: Path, text: str) -> dict:
        """After a save: the new version chosen and shown."""
        label = tdata.label_of(path)
        rows = tdata.load_jsonl(path).rows
        self.remembered.keep(label)
        return {self.chooser: gr.update(choices=list(tdata.available(self.datasets_dir)), value=label),
                **self.view(Draft(label, rows), text, reset=False, rename=True)}

    def save_rows(self, draft: Draft, name: str, rows: list[dict], note: str, what: str) -> dict:
        if not rows:
            return self.refused(f"No rows to save: {what} keeps none.")
        try:
            path = tdata.save_version(rows, name or "dataset", self.datasets_dir, note=note)
        except StorageError as exc:  # disk full or failing: the message says which and where
            return self.refused(str(exc))
        except ValueError as exc:  # a name that is a path, or otherwise unusable
            return self.refused(f"{exc} Nothing was saved.")
        return self.saved(path, f"**{len(rows)} rows** {what}, saved as `{path.name}` ({tdata.label_of(path)}).")

    # --- the draft's own handlers, and its token lengths (the filter and inspect use them) ---
    def on_choose(self, label, draft: Draft):
        """Open the picked version, unless that would drop the draft's unsaved changes."""
        if not draft.changes:
            return {**self.show(label), **self.settled()}
        return {self.chooser: gr.update(value=draft.label), **self.keep_draft(draft, label)}

    def on_save(self, draft: Draft, name):
        if not draft.label:
            added = draft.count("paraphrase")
            note = f"written in the editor ({len(draft.rows)} rows" + \
                (f", {added} of them added paraphrases)" if added else ")")
        elif draft.changes:
            note = f"edited from {draft.label}: {draft.describe()}"
        else:
            note = f"copy of {draft.label}"
        return self.save_rows(draft, name or NEW_NAME, draft.rows, note, "in the draft")

    def on_new(self, draft: Draft):
        """A new, empty draft; one with unsaved changes is kept (the discard button drops them)."""
        if draft.changes:
            return self.keep_draft(draft, None)
        return {**self.new_view(), **self.settled()}

    def lengths(self, draft: Draft, cache, model_name):
        """The draft's token lengths with the model's tokenizer, and the cache that holds them."""
        key = [draft.label, draft.rev, model_name]
        if cache and cache.get("key") == key:
            return cache["lengths"], cache
        source = models.resolve(model_name or models.BUNDLED, self.models_dir)
        if source.location not in self.tokenizers:
            from transformers import AutoTokenizer

            self.tokenizers[source.location] = AutoTokenizer.from_pretrained(source.location)
        lengths = sh.token_lengths(draft.rows, self.tokenizers[source.location])
        return lengths, {"key": key, "lengths": lengths}


# --- import ----------------------------------------------------------------------------
@dataclass(eq=False)
class Importer:
    """The import handlers: an upload, a starter file, the upload again with other settings, the Hub."""

    tab: DatasetTab
    # the last uploaded file, for importing it again with other settings: deleted when the next
    # one arrives, when it is cleared, and when the session ends
    upload_state: gr.State
    import_box: gr.Accordion
    shape: gr.Dropdown
    map_user: gr.Dropdown
    map_assistant: gr.Dropdown
    map_system: gr.Dropdown
    map_meta: gr.Dropdown

    @property
    def outputs(self) -> list:
        return [*self.tab.with_chooser, *self.tab.guarded, self.upload_state, self.import_box, self.shape,
                self.map_user, self.map_assistant, self.map_system, self.map_meta]

    def import_table(self, read, name: str, shape_name="auto-detect", mapping=None):
        """(outputs, the source's columns, whether rows were saved)."""
        columns = []
        try:
            table_ = read()
            columns = table_.columns
            result = imp.convert(table_, SHAPES.get(shape_name) if mapping is None else None, mapping)
            path = imp.save_import(result, name, self.tab.datasets_dir)
        except imp.ImportProblem as exc:
            return self.tab.refused(f"{exc}. Nothing was saved."), columns, False
        except StorageError as exc:
            return self.tab.refused(str(exc)), columns, False
        except OSError as exc:
            return self.tab.refused(f"{name}: cannot be read ({exc}). Nothing was saved."), columns, False
        text = (f"**{len(result.rows)} rows imported** from `{result.source}` "
                f"({imp.SHAPE_LABELS[result.shape]}) and saved as `{path.name}`.")
        notes = "".join(f"\n\nNote: {n}." for n in result.notes)
        return self.tab.saved(path, text + notes + problems_text(result.problems)), columns, True

    def mapping_choices(self, columns) -> dict:
        """Fill the mapping pickers with the file's columns and a first guess."""
        if not columns:
            return {}
        guess = imp.suggest_mapping(columns)
        return {self.map_user: gr.update(choices=columns, value=guess.user if guess else None),
                self.map_assistant: gr.update(choices=columns, value=guess.assistant if guess else None),
                self.map_system: gr.update(choices=[NO_COLUMN, *columns],
                                           value=guess.system if guess and guess.system else NO_COLUMN),
                self.map_meta: gr.update(choices=columns, value=[])}

    def on_upload(self, file, previous=None):
        """Import a file as it comes (its shape detected); one that no shape fits
        opens the settings with *custom mapping* and a guessed mapping. The upload
        before it (`previous`) is deleted: only the last one can be imported again."""
        if file is None:
            return {self.upload_state: None}
        path = Path(file if isinstance(file, str) else file.name)
        if previous and Path(previous) != path:
            forget_upload(previous)
        out, columns, ok = self.import_table(lambda: imp.read_file(path), path.stem)
        unknown = bool(columns) and not ok and imp.detect_shape(columns) is None
        guess = imp.suggest_mapping(columns) if unknown else None
        if guess:
            system_ = f", `{guess.system}` → system prompt" if guess.system else ""
            out[self.tab.message] += (f"\n\nA first guess is filled in under *Import settings*: `{guess.user}` → "
                                      f"user turn, `{guess.assistant}` → assistant reply{system_}. Check it, then "
                                      "press *Import the uploaded file with these settings*.")
        out[self.upload_state] = str(path)
        if not ok:
            out[self.import_box] = gr.update(open=True)
        if unknown:
            out[self.shape] = gr.update(value="custom mapping")
        return {**out, **self.mapping_choices(columns)}

    def on_starter_file(self, name, previous=None):
        if not name:
            return self.tab.refused("Choose a starter file first.")
        return self.on_upload(str(tdata.STARTER_DATASETS / name), previous)

    def on_reimport(self, path, shape_name, user, assistant, system_col, meta_cols):
        if not path:
            return self.tab.refused("Upload a file first; then choose its shape or columns here.")
        mapping = None
        if shape_name == "custom mapping":
            if not user or not assistant:
                return self.tab.refused("Choose the user turn column and the assistant reply column.")
            mapping = imp.Mapping(user, assistant, None if system_col in (None, NO_COLUMN) else system_col,
                                  tuple(meta_cols) if meta_cols else None)
        return self.import_table(lambda: imp.read_file(Path(path)), Path(path).stem, shape_name, mapping)[0]

    def on_hub(self, dataset_id, config, split):
        name = (dataset_id or "hub").split("/")[-1]
        return self.import_table(lambda: imp.read_hub(dataset_id, split or "train", config or None), name)[0]

    def run(self, kind: str, args) -> dict:
        handler = {"upload": self.on_upload, "starter": self.on_starter_file, "reimport": self.on_reimport,
                   "hub": self.on_hub}[kind]
        return {**handler(*args), **self.tab.settled()}

    def guarded_import(self, kind: str):
        """The import `kind`, unless it would replace a draft with unsaved changes, which is kept."""
        def handler(draft: Draft, *args):
            name = IMPORT_NAMES[kind](*args)
            if draft.changes and name:
                return self.tab.keep_draft(draft, None, (f"import {name}", kind, args))
            return self.run(kind, args)
        return handler

    def on_discard(self, draft: Draft, pending):
        """Drop the unsaved changes and do what was refused for them."""
        tab = self.tab
        if not pending or pending["rev"] != draft.rev:
            return {**tab.refused("The draft has changed since: nothing was dropped; do it again to drop the "
                                  "changes."), **tab.settled()}
        if pending.get("redo"):
            return self.run(*pending["redo"])
        if pending["label"] is None:
            return {**tab.new_view(), **tab.settled()}
        return {tab.chooser: gr.update(value=pending["label"]), **tab.show(pending["label"]), **tab.settled()}


def import_section(tab: DatasetTab):
    """The top row (the chooser, the name to save as, an upload) and the import settings."""
    with gr.Row():
        tab.chooser.render()
        tab.name_box.render()
        upload = gr.File(label="Import a file: JSONL, JSON, CSV or Parquet", elem_id="dataset-upload", scale=2,
                         file_types=[".jsonl", ".json", ".csv", ".tsv", ".parquet", ".ndjson"])
    with gr.Accordion("Import settings: shape, column mapping, Hugging Face Hub", open=False) as import_box:
        gr.Markdown("A file is converted by its columns: `messages` (chat), `conversations` (ShareGPT), "
                    "`instruction`/`input`/`output` (Alpaca), `instruction`/`context`/`response` (Dolly), "
                    "`prompt`/`completion`, `question`/`answer`. For other columns, choose *custom mapping*.")
        with gr.Row():
            shape = gr.Dropdown(list(SHAPES), value="auto-detect", label="Shape", elem_id="import-shape")
            map_user = gr.Dropdown([], label="User turn column", elem_id="map-user", allow_custom_value=True)
            map_assistant = gr.Dropdown([], label="Assistant reply column", elem_id="map-assistant",
                                        allow_custom_value=True)
            map_system = gr.Dropdown([NO_COLUMN], value=NO_COLUMN, label="System prompt column",
                                     elem_id="map-system", allow_custom_value=True)
            map_meta = gr.Dropdown([], value=[], multiselect=True, label="Keep as metadata (empty: all others)",
                                   elem_id="map-meta", allow_custom_value=True)
        with gr.Row():
            reimport = gr.Button("Import the uploaded file with these settings", elem_id="import-again", scale=2)
            starter_file = gr.Dropdown(starter_files(), label="Or a starter file that is not chat JSONL",
                                       elem_id="starter-file", scale=2)
            starter_button = gr.Button("Import the starter file", elem_id="import-starter", scale=1)
        with gr.Row():
            hub_id = gr.Textbox(label="Hugging Face Hub dataset id", placeholder="databricks/databricks-dolly-15k",
                                elem_id="hub-id", scale=3)
            hub_config = gr.Textbox(label="Config (optional)", scale=1)
            hub_split = gr.Textbox(value="train", label="Split", scale=1)
            hub_button = gr.Button("Import from the Hub", elem_id="hub-import", scale=1)
    importer = Importer(tab, gr.State(None, delete_callback=forget_upload), import_box, shape, map_user,
                        map_assistant, map_system, map_meta)
    settings = [shape, map_user, map_assistant, map_system, map_meta]
    for trigger, kind, inputs in (
            (upload.upload, "upload", [upload, importer.upload_state]),
            (starter_button.click, "starter", [starter_file, importer.upload_state]),
            (reimport.click, "reimport", [importer.upload_state, *settings]),
            (hub_button.click, "hub", [hub_id, hub_config, hub_split])):
        tab.recount(trigger(importer.guarded_import(kind), [tab.draft_state, *inputs], importer.outputs))
    upload.clear(lambda previous: forget_upload(previous), importer.upload_state, importer.upload_state)
    # what the discard button does may be an import, so it answers with the import settings too
    tab.discard_event = tab.discard_btn.click(importer.on_discard, [tab.draft_state, tab.pending_state],
                                              importer.outputs)
    tab.recount(tab.discard_event)


def draft_view(tab: DatasetTab):
    """What shows the draft: the message, the discard button, the versions and the table."""
    tab.message.render()
    tab.discard_btn.render()
    tab.versions_md.render()
    tab.table.render()
    tab.recount(tab.chooser.input(tab.on_choose, [tab.chooser, tab.draft_state], [*tab.with_chooser, *tab.guarded]))
    # whatever chose the version (a pick, a save, an import, the page's load) is what a reload reopens
    tab.chooser.change(tab.remembered.keep, tab.chooser, None, show_progress="hidden")
    # any change of the draft makes a refused pick moot
    tab.draft_state.change(tab.settled, None, tab.guarded, show_progress="hidden")


# --- edit ------------------------------------------------------------------------------
@dataclass(eq=False)
class RowEditor:
    """The row editor's fields and its Add/Replace/Delete."""

    tab: DatasetTab
    row_no: gr.Number
    system: gr.Textbox
    turns: gr.Dataframe
    meta: gr.Textbox
    check: gr.Markdown

    @property
    def outputs(self) -> list:
        return [self.row_no, self.system, self.turns, self.meta, self.check]

    def editor_for(self, draft: Draft, number) -> dict:
        n = int(number or 0)
        if not 1 <= n <= len(draft.rows):
            return {self.row_no: 0, self.system: "", self.turns: turns_frame([["", ""]]), self.meta: "",
                    self.check: ""}
        system_, turns_, meta_ = editing.editor_fields(draft.rows[n - 1])
        return {self.row_no: n, self.system: system_, self.turns: turns_frame(turns_), self.meta: meta_,
                self.check: f"Editing row {n}."}

    def blank_for_new(self, draft: Draft) -> dict:
        """An empty editor once the draft is a new, empty dataset (else nothing changes): a row
        left from the previous dataset would be offered, marked Ready, as the new one's first."""
        return self.editor_for(Draft(), 0) if draft == Draft() else {}

    def on_new(self, draft: Draft) -> dict:
        out = self.tab.on_new(draft)
        return {**out, **self.blank_for_new(out.get(self.tab.draft_state, draft))}

    def on_select(self, draft: Draft, evt: gr.SelectData):
        number = evt.row_value[0] if evt.row_value else evt.index[0] + 1
        return self.editor_for(draft, number)

    def edit(self, action: str):
        """The Add/Replace/Delete handler: the view and the row # (a refusal leaves the
        editor as it is), the editor cleared after an add so the next row starts empty."""
        refused = self.tab.refused

        def handler(draft: Draft, number, system_, turns_, meta_):
            n = int(number or 0)
            if action != "add" and not 1 <= n <= len(draft.rows):
                return refused(f"Pick the row to {action}: click it in the table or type its number.")
            try:
                if action == "delete":
                    rows = editing.delete_row(draft.rows, n - 1)
                    text = f"Row {n} deleted."
                else:
                    row, problems = editing.build_row(system_, _turn_list(turns_), meta_)
                    if problems:
                        return refused("Not saved: " + "; ".join(problems))
                    if action == "add":
                        rows = editing.add_row(draft.rows, row)
                        text = f"Row {len(rows)} added; the editor is cleared for the next one."
                    else:
                        rows = editing.replace_row(draft.rows, n - 1, row)
                        text = f"Row {n} replaced."
            except ValueError as exc:
                return refused(str(exc))
            out = self.tab.view(draft.changed(rows, action), text + " Save as a new version to keep it.", reset=False)
            return {**out, **(self.editor_for(Draft(), 0) if action == "add" else {self.row_no: n})}
        return handler


def edit_section(tab: DatasetTab):
    with gr.Tab("Edit rows", id="edit"):
        gr.Markdown("Click a row in the table to edit it, or fill the fields to add one. Each line of "
                    "*Turns* is a user message and the assistant's reply; several lines make a multi-turn "
                    "conversation.")
        with gr.Row():
            row_no = gr.Number(value=0, precision=0, minimum=0, label="Row # (0: a new row)",
                               elem_id="edit-row", scale=1)
            system = gr.Textbox(label="System prompt (optional)", elem_id="edit-system", scale=4)
        turns = gr.Dataframe(turns_frame([["", ""]]), headers=editing.TURN_COLUMNS, interactive=True, wrap=True,
                             elem_id="edit-turns", datatype=["str", "str"])
        meta = gr.Textbox(label='Metadata, a JSON object (e.g. {"category": "fact"})', elem_id="edit-meta")
        check = gr.Markdown(elem_id="edit-check")
        with gr.Row():
            add_turn = gr.Button("+ Turn", elem_id="edit-add-turn")
            add_btn = gr.Button("Add as a new row", variant="primary", elem_id="edit-add")
            replace_btn = gr.Button("Replace row #", elem_id="edit-replace")
            delete_btn = gr.Button("Delete row #", variant="stop", elem_id="edit-delete")
            clear_btn = gr.Button("Clear", elem_id="edit-clear")
            new_btn = gr.Button("Start a new, empty dataset", elem_id="dataset-new")
        save_btn = gr.Button("Save as a new version", variant="primary", elem_id="dataset-save")
    editor = RowEditor(tab, row_no, system, turns, meta, check)
    tab.table.select(editor.on_select, tab.draft_state, editor.outputs)
    row_no.submit(editor.editor_for, [tab.draft_state, row_no], editor.outputs)
    gr.on([system.change, turns.change, meta.change], on_check, [system, turns, meta], check,
          show_progress="hidden", trigger_mode="always_last")
    for button, action in ((add_btn, "add"), (replace_btn, "replace"), (delete_btn, "delete")):
        tab.recount(button.click(editor.edit(action), [tab.draft_state, row_no, system, turns, meta],
                                 [*tab.view_outputs, *editor.outputs]))
    add_turn.click(on_add_turn, turns, turns)
    clear_btn.click(lambda: editor.editor_for(Draft(), 0), None, editor.outputs)
    tab.recount(save_btn.click(tab.on_save, [tab.draft_state, tab.name_box], tab.with_chooser))
    tab.recount(new_btn.click(editor.on_new, tab.draft_state, [*tab.view_outputs, *tab.guarded, *editor.outputs]))
    if tab.discard_event is not None:  # dropping the changes to start a new dataset empties the editor too
        tab.discard_event.then(editor.blank_for_new, tab.draft_state, editor.outputs, show_progress="hidden")


# --- filter ----------------------------------------------------------------------------
def run_filters(tab: DatasetTab, draft: Draft, cache, model_name, controls):
    spec = filter_spec(*controls)
    lengths = None
    if spec.needs_lengths():
        lengths, cache = tab.lengths(draft, cache, model_name)
    return sh.apply_filters(draft.rows, spec, lengths), cache


def filter_section(tab: DatasetTab) -> dict:
    """Returns the event that counts what the filters keep, for each change of the draft."""
    with gr.Tab("Filter", id="filter") as filter_tab:
        with gr.Row():
            words = gr.Textbox(label="Keywords or phrases, comma-separated", elem_id="filter-words", scale=3)
            kw_mode = gr.Radio(["keep", "exclude"], value="keep", label="Rows with them", elem_id="filter-mode")
            kw_match = gr.Radio(["any", "all"], value="any", label="Match", elem_id="filter-match")
            whole = gr.Checkbox(value=True, label="Whole words", elem_id="filter-whole")
        tab.kw_fields.render()
        with gr.Row():
            tab.column.render()
            top_n = gr.Number(value=5, precision=0, minimum=1, label="N", elem_id="filter-top-n")
            top_btn = gr.Button("Keep the N most frequent values", elem_id="filter-top")
            tab.values.render()
        with gr.Row():
            min_tok = gr.Number(value=0, precision=0, minimum=0, label="Min tokens (0: none)",
                                elem_id="filter-min-tokens")
            max_tok = gr.Number(value=0, precision=0, minimum=0, label="Max tokens (0: none)",
                                elem_id="filter-max-tokens")
            dedupe = gr.Checkbox(value=False, label="Remove exact duplicates", elem_id="filter-dedupe")
            sample = gr.Number(value=0, precision=0, minimum=0, label="Downsample to N rows (0: all)",
                               elem_id="filter-sample")
            filter_seed = gr.Number(value=0, precision=0, label="Seed", elem_id="filter-seed")
        filter_msg = gr.Markdown(elem_id="filter-message")
        funnel = gr.Dataframe(interactive=False, elem_id="filter-counts")
        kept_preview = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, wrap=True, max_height=300,
                                    max_chars=200, column_widths=TABLE_WIDTHS, elem_id="filter-preview",
                                    label="First kept rows")
        save_filtered = gr.Button("Save the kept rows as a new version", variant="primary", elem_id="filter-save")
    filter_inputs = [words, kw_mode, kw_match, whole, tab.kw_fields, tab.column, tab.values, min_tok, max_tok,
                     dedupe, sample, filter_seed]

    def on_filter(draft: Draft, cache, *rest):
        model_name, controls = tab.picked(rest)
        try:
            out, cache = run_filters(tab, draft, cache, model_name, controls)
        except (ValueError, models.ModelUnavailable) as exc:
            return {filter_msg: f"⚠️ {exc}", funnel: None, kept_preview: None, tab.lengths_state: cache}
        if not out.steps:
            text = f"No filter is on: all **{len(draft.rows)} rows** are kept."
        else:
            text = f"Keeps **{len(out.rows)} of {len(draft.rows)} rows**."
        return {filter_msg: text, funnel: out.table(), kept_preview: table_frame(out.rows[:50]),
                tab.lengths_state: cache}

    def on_save_filtered(draft: Draft, cache, name, *rest):
        model_name, controls = tab.picked(rest)
        try:
            out, _cache = run_filters(tab, draft, cache, model_name, controls)
        except (ValueError, models.ModelUnavailable) as exc:
            return tab.refused(str(exc))
        if not out.steps:
            return tab.refused("No filter is on: set one first.")
        return tab.save_rows(draft, name, out.rows, f"filtered from {draft.label}: {out.describe()}",
                             f"kept of {len(draft.rows)}")

    counts = dict(fn=on_filter, inputs=[tab.draft_state, tab.lengths_state, *tab.model_input, *filter_inputs],
                  outputs=[filter_msg, funnel, kept_preview, tab.lengths_state], show_progress="hidden")
    gr.on([c.change for c in filter_inputs if c is not tab.column] + [filter_tab.select], trigger_mode="always_last",
          **counts)
    tab.column.input(on_column, [tab.draft_state, tab.column], tab.values)
    top_btn.click(on_top, [tab.draft_state, tab.column, top_n], tab.values)
    tab.recount(save_filtered.click(on_save_filtered, [tab.draft_state, tab.lengths_state, tab.name_box,
                                                       *tab.model_input, *filter_inputs], tab.with_chooser))
    return counts


# --- split -----------------------------------------------------------------------------
def split_section(tab: DatasetTab) -> dict:
    """Returns the event that counts the split's parts, for each change of the draft."""
    with gr.Tab("Split", id="split") as split_tab:
        with gr.Row():
            train_pct = gr.Number(value=80, precision=0, minimum=0, maximum=100, label="Train %",
                                  elem_id="split-train")
            val_pct = gr.Number(value=10, precision=0, minimum=0, maximum=100, label="Validation %",
                                elem_id="split-validation")
            test_pct = gr.Number(value=10, precision=0, minimum=0, maximum=100, label="Test %",
                                 elem_id="split-test")
            split_seed = gr.Number(value=0, precision=0, label="Seed", elem_id="split-seed")
            tab.stratify.render()
        split_msg = gr.Markdown(elem_id="split-message")
        split_counts = gr.Dataframe(interactive=False, elem_id="split-counts")
        gr.Markdown("The split is stored in each row (`split`): training trains on *train*, draws the "
                    "validation curve from *validation*, and Compare offers the *test* prompts, with their "
                    "reference answers.")
        save_split = gr.Button("Save with this split as a new version", variant="primary", elem_id="split-save")
    split_inputs = [train_pct, val_pct, test_pct, split_seed, tab.stratify]

    def on_save_split(draft: Draft, name, *controls):
        try:
            spec = split_spec(*controls)
        except ValueError as exc:
            return tab.refused(str(exc))
        return tab.save_rows(draft, name, sh.apply_split(draft.rows, spec), f"{spec.describe()}, of {draft.label}",
                             f"with a {spec.describe()}")

    counts = dict(fn=on_split, inputs=[tab.draft_state, *split_inputs], outputs=[split_msg, split_counts],
                  show_progress="hidden")
    gr.on([c.change for c in split_inputs] + [split_tab.select], trigger_mode="always_last", **counts)
    tab.recount(save_split.click(on_save_split, [tab.draft_state, tab.name_box, *split_inputs], tab.with_chooser))
    return counts


# --- expand ----------------------------------------------------------------------------
def expand_section(tab: DatasetTab):
    with gr.Tab("Expand", id="expand"):
        gr.Markdown("The base model (picked above) proposes a rewording of the user turn of random original "
                    "rows (never of an added paraphrase). Proposals that look unusable (empty, already in the "
                    "draft, talk about the rewording (\"Here is the rephrased version…\") instead of being one, "
                    "or sharing few words with the original: *shared words* measures how many content "
                    "words the two have in common) are flagged and not ticked. Tick the ones to keep (you can "
                    "edit them), add them to the draft, then save it.")
        with gr.Row():
            n_prompts = gr.Number(value=5, precision=0, minimum=1, maximum=100, label="Rows to paraphrase",
                                  elem_id="expand-n")
            expand_seed = gr.Number(value=0, precision=0, label="Seed", elem_id="expand-seed")
            temperature = gr.Slider(0.0, 1.5, value=0.7, step=0.1, label="Temperature")
            max_new = gr.Slider(16, 256, value=64, step=16, label="Max new tokens", elem_id="expand-max-new")
        propose = gr.Button("Propose paraphrases", elem_id="expand-propose")
        expand_msg = gr.Markdown(elem_id="expand-message")
        proposals = gr.Dataframe(pd.DataFrame(columns=PROPOSAL_COLUMNS), headers=PROPOSAL_COLUMNS,
                                 datatype=["bool", "number", "str", "str", "str", "str"], interactive=True,
                                 wrap=True, static_columns=[1, 2, 4, 5],
                                 column_widths=["6%", "6%", "30%", "34%", "8%", "16%"],
                                 elem_id="expand-proposals")
        with gr.Row():
            add_proposals = gr.Button("Add the ticked paraphrases to the draft", elem_id="expand-add")
            expand_save = gr.Button("Save the draft as a new version", variant="primary", elem_id="expand-save")
        batch_state = gr.State(None)  # {"running": bool}: whether paraphrases are being proposed

    def on_propose(draft: Draft, *rest):
        """Proposals for random original rows; while they are made, Add is off
        (and refused, for a click already on its way) and the old batch is cleared."""
        model_name, (n, seed, temp, max_new_) = tab.picked(rest, models.BUNDLED)
        sources = len(paraphrase.source_rows(draft.rows))
        if not sources:
            why = f" (all {len(draft.rows)} rows are added paraphrases)" if draft.rows else ""
            yield {expand_msg: f"⚠️ Pick a dataset with rows to paraphrase first{why}.", batch_state: None}
            return
        if tab.generator is None:
            tab.generator = Generator(tab.models_dir)
        yield {expand_msg: f"Proposing paraphrases of {min(int(n or 1), sources)} row(s) with `{model_name}`…",
               proposals: pd.DataFrame(columns=PROPOSAL_COLUMNS), batch_state: {"running": True},
               add_proposals: gr.update(interactive=False)}
        try:
            settings = GenSettings(max_new_tokens=int(max_new_), temperature=float(temp), seed=int(seed or 0))
            found = paraphrase.propose_paraphrases(tab.generator, model_name, draft.rows, int(n or 1),
                                                   int(seed or 0), settings)
        except Exception as exc:  # a bad setting or model, out of memory…: said, and Add works again
            known = isinstance(exc, (ValueError, models.ModelUnavailable))
            text = str(exc) if known else f"Proposing failed: {type(exc).__name__}: {exc}"
            yield {expand_msg: f"⚠️ {text}", batch_state: None, add_proposals: gr.update(interactive=True)}
            return
        yield {expand_msg: proposals_summary(found, int(n or 1), draft.rows, model_name),
               proposals: proposals_frame(found), batch_state: None, add_proposals: gr.update(interactive=True)}

    def on_add_proposals(draft: Draft, batch, frame):
        if batch and batch.get("running"):
            return tab.refused("New proposals are being made: wait for them, then tick the ones to add.")
        chosen = accepted(frame)
        if not chosen:
            return tab.refused("Tick at least one proposal with a paraphrase.")
        if foreign_proposals(draft, chosen):
            return tab.refused("These proposals belong to other rows (another version, or rows edited since): "
                               "propose again.")
        rows, added = paraphrase.add_paraphrases(draft.rows, [(i, text) for i, _, text in chosen])
        if not added:
            return tab.refused(f"Nothing added: the {len(chosen)} ticked paraphrase(s) are already added to the "
                               "draft.")
        skipped = len(chosen) - added
        text = f"{added} paraphrase(s) added to the draft" + \
            (f" ({skipped} ticked one(s) skipped: already added)" if skipped else "")
        return tab.view(draft.changed(rows, "paraphrase", added), text + ". Save as a new version to keep them.",
                        reset=False)

    propose.click(on_propose, [tab.draft_state, *tab.model_input, n_prompts, expand_seed, temperature, max_new],
                  [expand_msg, proposals, batch_state, add_proposals])
    tab.recount(add_proposals.click(on_add_proposals, [tab.draft_state, batch_state, proposals], tab.view_outputs))
    tab.recount(expand_save.click(tab.on_save, [tab.draft_state, tab.name_box], tab.with_chooser))


# --- inspect and export ----------------------------------------------------------------
def inspect_section(tab: DatasetTab):
    with gr.Tab("Inspect & export", id="inspect"):
        with gr.Row():
            max_len = gr.Number(value=TrainConfig().max_seq_length, precision=0, minimum=1,
                                label="Max sequence length (tokens)", elem_id="inspect-max-length")
            measure = gr.Button("Measure token lengths with the base model's tokenizer", elem_id="inspect-measure")
        length_md = gr.Markdown(elem_id="inspect-summary")
        # a Vega-Lite spec drawn by gr.Plot, not a BarPlot (tuner/ui/charts.py says why)
        histogram = gr.Plot(None, show_label=False, elem_id="inspect-histogram")
        with gr.Row():
            part = gr.Radio(["all", *tdata.SPLITS], value="all", label="Part of the chosen version",
                            elem_id="export-part")
            fmt = gr.Radio(["JSONL", "CSV"], value="JSONL", label="Format", elem_id="export-format")
            export_btn = gr.Button("Download", elem_id="export-button")
        export_msg = gr.Markdown(elem_id="export-message")
        export_file = gr.File(label="Download", interactive=False, elem_id="export-file")

    def on_measure(draft: Draft, cache, *rest):
        model_name, (max_length,) = tab.picked(rest)
        if not draft.rows:
            return {histogram: None, length_md: "Pick a dataset first.", tab.lengths_state: cache}
        try:
            lengths, cache = tab.lengths(draft, cache, model_name)
        except (ValueError, OSError, models.ModelUnavailable) as exc:
            return {histogram: None, length_md: f"⚠️ {exc}", tab.lengths_state: cache}
        hist = sh.length_histogram(lengths)
        return {histogram: chart(bar_spec, hist, "tokens", "rows", "Rows per token length"),
                length_md: sh.length_summary(lengths, int(max_length or 1)), tab.lengths_state: cache}

    def on_export(label, which, kind):
        path = tdata.available(tab.datasets_dir).get(label)
        if path is None:
            return None, "⚠️ Pick a dataset version first."
        try:
            text = tdata.export_text(tdata.load_jsonl(path).rows, kind.lower(), which)
        except ValueError as exc:
            return None, f"⚠️ {path.stem}: {exc}."
        out = Path(tempfile.mkdtemp(prefix="tuner-export-")) / \
            f"{path.stem}{'' if which == 'all' else '-' + which}.{kind.lower()}"
        out.write_text(text, encoding="utf-8")
        return str(out), f"`{out.name}` is ready ({len(text.encode()) / 1024:.1f} KB)."

    measure.click(on_measure, [tab.draft_state, tab.lengths_state, *tab.model_input, max_len],
                  [histogram, length_md, tab.lengths_state])
    export_btn.click(on_export, [tab.chooser, part, fmt], [export_file, export_msg])


def dataset_tab(datasets_dir: Path, model_picker=None, models_dir: Path | None = None,
                generator: Generator | None = None):
    """Returns the dataset dropdown (its value names the chosen version) and the (handler,
    outputs) that fill the tab, for the page's load event."""
    tab = DatasetTab.create(datasets_dir, model_picker, models_dir, generator)
    import_section(tab)
    draft_view(tab)
    with gr.Tabs():
        edit_section(tab)
        filter_counts = filter_section(tab)
        split_counts = split_section(tab)
        expand_section(tab)
        inspect_section(tab)
    for event in tab.draft_events:
        event.then(**filter_counts).then(**split_counts)
    return tab.chooser, (tab.show, tab.view_outputs)


class LastChoice:
    """The dataset version the owner chose last, in a small file beside the datasets, so a
    reload (or a restart) reopens it rather than the first starter set."""

    def __init__(self, datasets_dir: Path):
        self.path = Path(datasets_dir) / ".last-choice"

    def keep(self, label) -> None:
        if isinstance(label, str) and label in tdata.available(self.path.parent):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.path, label)
            except (OSError, StorageError):
                pass  # a convenience: a full disk must not turn a pick into an error

    def get(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError):
            return None


def refresh_datasets_fn(datasets_dir: Path):
    """A load handler: the chooser's choices as they are now, keeping its value, else the
    one chosen last (LastChoice, so a reload reopens it), else the default (the chooser is
    built empty: saved datasets' names are the owner's)."""
    remembered = LastChoice(datasets_dir)

    def refresh(current):
        names = list(tdata.available(datasets_dir))
        if current not in names:
            current = remembered.get()
        if current not in names:
            default = DEFAULT_DATASET
            current = default if default in names else (names[0] if names else None)
        return gr.update(choices=names, value=current)

    return refresh
