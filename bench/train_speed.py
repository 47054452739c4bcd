"""One epoch of LoRA training: the usual tutorial way, TRL's SFTTrainer at its best, and Tuner's engine.

    python bench/train_speed.py                 # CPU, 64 rows, all three ways (~7 min on 2 cores)
    python bench/train_speed.py --ways trl tuner   # the two that matter most
    python bench/train_speed.py --quick         # 16 rows: a smoke run
    python bench/train_speed.py --device cuda   # TinyLlama-1.1B-shaped random model on a GPU

All ways train the same model (the bundled SmolLM2-135M-Instruct; on cuda a
random-weight model of TinyLlama-1.1B's shape) on the same examples (the first
--rows rows of datasets/formal_email.jsonl) with the same LoRA settings
(r=16, alpha=32, q/k/v/o projections, learning rate 2e-4) for one epoch:

- baseline, the usual tutorial way: plain transformers Trainer + peft, fp32
  weights (on cuda: bf16 autocast, as GPU tutorials do), every example
  rendered with the chat template and padded to 512 tokens
  (padding="max_length"), per-device batch 2, gradient accumulation 4,
  labels = input_ids with the padding masked to -100, LoRA dropout 0.05;
- trl, what a well-informed user picks instead: TRL's SFTTrainer with prompt/completion rows
  (completion-only loss), packing with padding_free, bf16 where the probe says it is fast, no
  gradient checkpointing, LoRA dropout 0, batch 8 (see run_trl);
- tuner: `tuner.train.train` with a TrainConfig at its defaults (among them
  LoRA dropout 0, packing with per-example attention, and on a CPU whose bf16
  matmuls measure ≥2x fp32's, a bf16 base under autocast), only the LoRA
  settings, one epoch and the dataset set (with no validation/test split, so
  that it trains on the same rows).

Each way runs in its own subprocess, so that its peak resident memory (VmHWM)
is its own. Reported per way: the wall time of the epoch (training begun to
last step ended; model loading and tokenizing excluded, checkpoints Tuner
writes during the epoch included), useful (non-padding) tokens per second,
peak RSS, the final training loss (the last logged step: the baseline's loss
is over every token, Tuner's over the assistant's) and, as a like-for-like
quality check, both adapters' loss on the assistant tokens of the file's last
8 rows, which neither way trains on (fp32 base + adapter, on the same code).

Achieved FLOP/s counts 4 × (the model's total parameter count) FLOPs per
useful token (forward 2N, backward through the frozen weights 2N; LoRA's own
weights are a rounding error), set against this machine's bf16 matmul peak,
measured here with a timed loop of large torch.matmul at the same thread
count (the best of a run before and a run after the training).

Prints human-readable figures and ends with one JSON line. Timings are as
noisy as the machine is shared: compare the ways of one invocation (speedup: against the
tutorial way; speedup_vs_trl: against TRL's).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATASET = ROOT / "datasets" / "formal_email.jsonl"
HELD_OUT = 8  # the file's last rows: the like-for-like quality check, never trained on
LORA = {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
TUTORIAL_DROPOUT = 0.05  # what the usual recipe sets; Tuner keeps its own default (0)
LEARNING_RATE = 2e-4  # Tuner's default, and the tutorials' usual choice
BASELINE_PAD_TO = 512
RESULT_MARK = "TRAIN_SPEED_RESULT "
# Dense bf16 peaks (no sparsity) of GPUs this may run on, TFLOP/s, from the vendors' data sheets.
GPU_BF16_PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H200": 989.0,
                        "A100": 312.0, "L4": 121.0, "A10G": 70.0, "T4": 65.0}
# TinyLlama-1.1B's shape; no download is possible here, so random weights.
TINYLLAMA_SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)


# --- measuring ----------------------------------------------------------------------------

# SmolLM2-135M's largest matmul in a training step: 4 packed rows of 256 tokens × hidden 576 →
# the MLP's 1,536 (the attention projections are 576 → 576 and 192: skinnier still)
MODEL_SHAPE = (1024, 576, 1536)


def matmul_peak_gflops(device: str, seconds: float = 3.0, shape: tuple[int, int, int] | None = None) -> float:
    """Best sustained GFLOP/s of bf16 matmuls at torch's thread count: square ones (a few
    sizes), or (m, k) @ (k, n) for `shape`."""
    import torch

    best = 0.0
    sizes = [shape] if shape else [(n, n, n) for n in ((2048, 4096) if device == "cpu" else (8192,))]
    for m, k, n in sizes:
        a = torch.randn(m, k, dtype=torch.bfloat16, device=device)
        b = torch.randn(k, n, dtype=torch.bfloat16, device=device)
        out = torch.empty(m, n, dtype=torch.bfloat16, device=device)
        for _ in range(3):
            torch.matmul(a, b, out=out)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        for _ in range(3):  # three timed rounds of about seconds/3/len(sizes) each: keep the best
            reps, start = 0, time.perf_counter()
            while True:
                torch.matmul(a, b, out=out)
                reps += 1
                if reps % 4 == 0:
                    sync()
                    elapsed = time.perf_counter() - start
                    if elapsed > seconds / 3 / len(sizes):
                        break
            best = max(best, 2 * m * k * n * reps / elapsed / 1e9)
    return best


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # not Linux: ru_maxrss is in kB on Linux, bytes on macOS

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def machine() -> dict:
    import torch

    info = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cores": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                           if line.startswith("model name"))
        flags = set(next(line for line in cpuinfo.splitlines() if line.startswith("flags")).split())
        info["cpu_bf16"] = sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    import transformers
    import peft

    info["transformers"], info["peft"] = transformers.__version__, peft.__version__
    return info


def known_gpu_peak(name: str) -> float | None:
    """bf16 dense peak in GFLOP/s from the table, by the device name torch reports."""
    upper = name.upper()
    if "H100" in upper:
        key = "H100 NVL" if "NVL" in upper else ("H100 PCIe" if "PCIE" in upper else "H100 SXM")
        return GPU_BF16_PEAK_TFLOPS[key] * 1e3
    for key, tflops in GPU_BF16_PEAK_TFLOPS.items():
        if key.split()[0] in upper:
            return tflops * 1e3
    return None


# --- the model and the data ---------------------------------------------------------------

def read_rows(n: int) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in DATASET.read_text(encoding="utf-8").splitlines() if line.strip()]
    limit = len(rows) - HELD_OUT
    if not 1 <= n <= limit:
        raise SystemExit(f"--rows must be between 1 and {limit} (the last {HELD_OUT} rows are held out)")
    return rows[:n], rows[-HELD_OUT:]


def trim_vocab(tokenizer_json: Path, size: int) -> None:
    """Cut a byte-level BPE tokenizer down to its first `size` ids: keep the vocab
    entries and merges below `size` (every byte keeps its token, so any text still
    encodes). For a model whose vocabulary is smaller than the tokenizer's."""
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = spec["model"]
    model["vocab"] = {tok: i for tok, i in model["vocab"].items() if i < size}
    merges = []
    for merge in model["merges"]:
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        if a in model["vocab"] and b in model["vocab"] and a + b in model["vocab"]:
            merges.append(merge)
    model["merges"] = merges
    spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if t["id"] < size]
    tokenizer_json.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


def model_folder(device: str, work: Path) -> str:
    """cpu: the bundled model's folder. cuda: a TinyLlama-1.1B-shaped random model,
    with the bundled tokenizer cut to its 32,000-token vocabulary, saved once under `work`."""
    from tuner import models
    from tuner.paths import Layout, data_root

    bundled = models.resolve(models.BUNDLED, Layout(data_root()).models).location
    if device == "cpu":
        return bundled
    folder = work / "tinyllama-shape"
    if (folder / "config.json").is_file():
        return str(folder)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundled)
    config = LlamaConfig(**TINYLLAMA_SHAPE, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):  # random init of 1.1 B parameters is slow on a CPU
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(folder)  # 2.2 GB; each way loads it in its own precision
    tokenizer.save_pretrained(folder)
    trim_vocab(folder / "tokenizer.json", TINYLLAMA_SHAPE["vocab_size"])
    return str(folder)


def held_out_loss(model, tokenizer, rows: list[dict]) -> float:
    """Mean loss over the assistant tokens of held-out rows, one row at a time."""
    import torch

    from tuner.chat import encode_example

    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            enc = encode_example(row["messages"], tokenizer, 1024)
            ids = torch.tensor([enc["input_ids"]], device=device)
            labels = torch.tensor([enc["labels"]], device=device)
            n = int((labels[0, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
    return total / count


def fp32_with_adapter(location: str, adapter: str | None, device: str):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import torch

    base = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32).to(device)
    return PeftModel.from_pretrained(base, adapter) if adapter else base


class Clock:
    """Stamps for the epoch: training begun, last step ended (a Trainer callback)."""

    def __init__(self):
        self.begin = self.end = None
        self.steps = 0

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class Stamps(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                clock.begin = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                clock.end = time.perf_counter()
                clock.steps = state.global_step

        return Stamps()

    @property
    def seconds(self) -> float:
        return self.end - self.begin


# --- the ways, each in its own process -----------------------------------------------

def run_baseline(args, work: Path) -> dict:
    """The usual tutorial recipe, as most LoRA notebooks write it."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    rows, held_out = read_rows(args.rows)
    location = model_folder(args.device, work)
    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    total_params = sum(p.numel() for p in model.parameters())
    model = get_peft_model(model, LoraConfig(**LORA, lora_dropout=TUTORIAL_DROPOUT, task_type="CAUSAL_LM"))

    def tokenize(example):
        text = tokenizer.apply_chat_template(example["messages"], tokenize=False)
        enc = tokenizer(text, padding="max_length", truncation=True, max_length=BASELINE_PAD_TO,
                        add_special_tokens=False)
        # pad tokens masked by the attention mask: here pad == eos (<|im_end|>), and
        # masking every pad id would also hide each turn's real end from the loss
        enc["labels"] = [t if m else -100 for t, m in zip(enc["input_ids"], enc["attention_mask"])]
        return enc

    train_set = Dataset.from_list(rows).map(tokenize, remove_columns=["messages"] + [
        k for k in rows[0] if k != "messages"])
    useful = sum(sum(m) for m in train_set["attention_mask"])
    clock = Clock()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(work / "baseline"), per_device_train_batch_size=2, gradient_accumulation_steps=4,
            num_train_epochs=1, learning_rate=LEARNING_RATE, logging_steps=1, save_strategy="no",
            report_to=[], disable_tqdm=True, use_cpu=args.device == "cpu",
            bf16=args.device == "cuda", seed=42),
        train_dataset=train_set, callbacks=[clock.callback()])
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {"epoch_s": clock.seconds, "steps": clock.steps, "useful_tokens": useful,
              "computed_tokens": len(train_set) * BASELINE_PAD_TO, "final_loss": losses[-1],
              "total_params": total_params, "precision": "fp32" + (" + bf16 autocast" if args.device == "cuda" else "")}
    if args.device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    model.eval()
    result["held_out_loss"] = held_out_loss(model.float(), tokenizer, held_out)
    with model.disable_adapter():
        result["held_out_loss_base"] = held_out_loss(model, tokenizer, held_out)
    return result


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string such as fp32


def run_tuner(args, work: Path) -> dict:
    """Tuner's engine at its defaults: only the LoRA settings, one epoch and the dataset set."""
    import torch

    from tuner.config import TrainConfig
    from tuner.train import RunControl, train

    rows, held_out = read_rows(args.rows)
    location = model_folder(args.device, work)
    dataset = work / "rows.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    overrides = dict(kv.split("=", 1) for kv in args.tuner_set)
    config = TrainConfig.from_dict({
        "base_model": location, "dataset": str(dataset), **LORA, "num_train_epochs": 1,
        "validation_fraction": 0.0, "test_fraction": 0.0,  # train on the same rows as the baseline
        **{k: _value(v) for k, v in overrides.items()}})
    clock = Clock()
    run_dir = work / "tuner-run"
    run_dir.mkdir()
    stamps = []

    def update(**changes):
        if changes.get("status") == "running":
            stamps.append(("begin", time.perf_counter()))
        if changes.get("step"):
            stamps.append(("step", time.perf_counter()))

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    summary = train(config, run_dir, RunControl(update=update), models_dir=work / "models")
    # RunControl reports on_train_begin and every step end: the epoch runs from the first to the last
    begin = next(t for kind, t in stamps if kind == "begin")
    clock.begin, clock.end = begin, max(t for kind, t in stamps if kind == "step")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    from transformers import AutoTokenizer

    from tuner.chat import encode_example

    tokenizer = AutoTokenizer.from_pretrained(location)
    useful = sum(len(e["input_ids"]) for e in (encode_example(r["messages"], tokenizer, config.max_seq_length)
                                               for r in rows) if e is not None)
    result = {"epoch_s": clock.seconds, "steps": summary["global_step"], "useful_tokens": useful,
              "computed_tokens": useful, "final_loss": losses[-1], "total_params": summary["total_params"],
              "precision": summary["precision"], "config": {k: v for k, v in config.to_dict().items()
                                                            if k not in ("dataset", "base_model", "extra")}}
    if args.device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    model = fp32_with_adapter(location, str(run_dir / "adapter"), args.device)
    result["held_out_loss"] = held_out_loss(model, tokenizer, held_out)
    return result


def run_trl(args, work: Path) -> dict:
    """What a well-informed user picks instead of the tutorial: TRL's SFTTrainer at its documented
    best for this case. The rows as prompt/completion conversations (the loss on the completion
    only: TRL's `completion_only_loss`; SmolLM2's chat template has no generation markers, so
    `assistant_only_loss` cannot be used), packing with `padding_free` (TRL's BFD packing: no pad
    tokens, each example's positions restart), bf16 where this CPU's probe says bf16 is fast (the
    base in bf16 under autocast, as Tuner does), no gradient checkpointing (TRL's default is on; at
    this size memory is no concern), the same LoRA settings with Tuner's dropout (0), TRL's
    default batch of 8 rows, the same learning rate and one epoch."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tuner.train import resolve_precision

    rows, held_out = read_rows(args.rows)
    location = model_folder(args.device, work)
    tokenizer = AutoTokenizer.from_pretrained(location)
    bf16 = resolve_precision("auto") == "bf16"
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.bfloat16 if bf16 else torch.float32)
    total_params = sum(p.numel() for p in model.parameters())
    pairs = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    clock = Clock()
    config = SFTConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=8, gradient_accumulation_steps=1,
        num_train_epochs=1, learning_rate=LEARNING_RATE, logging_steps=1, save_strategy="no", report_to=[],
        disable_tqdm=True, use_cpu=args.device == "cpu", bf16=bf16, seed=42, packing=True, padding_free=True,
        max_length=1024, completion_only_loss=True, gradient_checkpointing=False)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
                         peft_config=LoraConfig(**LORA, lora_dropout=0.0, task_type="CAUSAL_LM"),
                         callbacks=[clock.callback()])
    useful = sum(len(x) for x in trainer.train_dataset["input_ids"])
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {"epoch_s": clock.seconds, "steps": clock.steps, "useful_tokens": useful, "computed_tokens": useful,
              "final_loss": losses[-1], "total_params": total_params,
              "precision": "bf16 base + autocast" if bf16 else "fp32"}
    if args.device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    trainer.model.save_pretrained(work / "trl-adapter")
    model = fp32_with_adapter(location, str(work / "trl-adapter"), args.device)
    result["held_out_loss"] = held_out_loss(model, tokenizer, held_out)
    return result


WAYS = {"baseline": run_baseline, "tuner": run_tuner, "trl": run_trl}


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix=f"train-speed-{args.child}-") as tmp:
        work = Path(tmp)
        if args.model_dir:  # cuda: the random model the parent built once, for every way
            (work / "tinyllama-shape").symlink_to(Path(args.model_dir) / "tinyllama-shape")
        result = WAYS[args.child](args, work)
    result["peak_rss_mb"] = peak_rss_mb()
    result["threads"] = torch.get_num_threads()
    print(RESULT_MARK + json.dumps(result), flush=True)


def spawn(way: str, args, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", way, "--rows", str(args.rows), "--device", args.device, *extra]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-6000:])
        raise SystemExit(f"the {way} run failed (exit {done.returncode})")
    result = json.loads(lines[-1][len(RESULT_MARK):])
    result["process_s"] = time.perf_counter() - start  # with imports, loading, tokenizing, saving
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="training rows (default 64; 16 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: 16 rows, a shorter peak measurement")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--ways", nargs="+", default=["baseline", "trl", "tuner"], choices=list(WAYS))
    parser.add_argument("--tuner-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra TrainConfig settings for Tuner's run (e.g. precision=fp32)")
    parser.add_argument("--child", choices=list(WAYS), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rows = args.rows or (16 if args.quick else 64)
    read_rows(args.rows)  # refuses a bad --rows before anything starts
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA GPU is available to torch here "
                             f"(torch {torch.__version__}); run without --device, or on a machine with a GPU "
                             "and a CUDA build of torch.")
    if args.child:
        return child(args)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    peak_seconds = 1.0 if args.quick else 3.0
    peaks = [matmul_peak_gflops(args.device, peak_seconds)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="train-speed-") as shared:
        extra = []
        if args.device == "cuda":  # build the random 1.1 B model once, for every way
            model_folder("cuda", Path(shared))
            extra = ["--model-dir", shared]
        for way in args.ways:
            results[way] = spawn(way, args, extra + (["--tuner-set", *args.tuner_set]
                                                     if way == "tuner" and args.tuner_set else []))
            print(f"  {way}: done in {results[way]['process_s']:.0f} s", flush=True)
    peaks.append(matmul_peak_gflops(args.device, peak_seconds))
    peak = max(peaks)
    # what the model's own matmul shape reaches: the ceiling a step's matmuls can hope for here
    shape_peak = matmul_peak_gflops("cpu", peak_seconds, MODEL_SHAPE) if args.device == "cpu" else None
    table_peak = known_gpu_peak(info.get("gpu", "")) if args.device == "cuda" else None

    what = "SmolLM2-135M-Instruct (bundled)" if args.device == "cpu" else "TinyLlama-1.1B shape, random weights"
    print(f"\n{what}, {args.rows} rows of {DATASET.name}, LoRA r=16 alpha=32 q/k/v/o, 1 epoch, "
          f"{info['threads']} threads on {info.get('gpu') or info['cpu']} (load average {info.get('load_average')})")
    print(f"bf16 matmul peak measured: {peak:.0f} GFLOP/s (runs: {', '.join(f'{p:.0f}' for p in peaks)})"
          + (f"; data-sheet peak {table_peak / 1e3:.0f} TFLOP/s" if table_peak else "")
          + (f"; at the model's own largest shape {'×'.join(map(str, MODEL_SHAPE))}: {shape_peak:.0f} GFLOP/s"
             if shape_peak else ""))
    for way, r in results.items():
        r["tokens_per_s"] = r["useful_tokens"] / r["epoch_s"]
        r["gflops"] = 4 * r["total_params"] * r["tokens_per_s"] / 1e9
        r["peak_share"] = r["gflops"] / peak
        print(f"{way:>8}: epoch {r['epoch_s']:6.1f} s ({r['steps']} optimizer steps, {r['precision']}), "
              f"{r['tokens_per_s']:6.1f} useful tokens/s ({r['useful_tokens']} useful of "
              f"{r['computed_tokens']} computed), {r['gflops']:5.1f} GFLOP/s = {100 * r['peak_share']:.1f}% of peak"
              + (f" ({100 * r['gflops'] / shape_peak:.0f}% of the model-shape peak)" if shape_peak else "") + ", "
              f"peak RSS {r['peak_rss_mb']:.0f} MB" + (f", peak GPU memory {r['peak_gpu_mb']:.0f} MB"
                                                       if "peak_gpu_mb" in r else "")
              + f", final loss {r['final_loss']:.4f}, held-out assistant loss {r['held_out_loss']:.4f}")
    out = {"benchmark": "train_speed", "device": args.device, "model": what, "rows": args.rows,
           "total_params": next(iter(results.values()))["total_params"],
           "flops_per_token": "4 x total parameters", "peak_gflops": round(peak, 1),
           "model_shape_peak_gflops": round(shape_peak, 1) if shape_peak else None, **info}
    if table_peak:
        out["table_peak_gflops"] = table_peak
    for way, r in results.items():
        out[f"{way}_epoch_s"] = round(r["epoch_s"], 2)
        out[f"{way}_tokens_per_s"] = round(r["tokens_per_s"], 1)
        out[f"{way}_peak_rss_mb"] = round(r["peak_rss_mb"], 1)
        out[f"{way}_final_loss"] = round(r["final_loss"], 4)
        out[f"{way}_held_out_loss"] = round(r["held_out_loss"], 4)
        out[f"{way}_gflops"] = round(r["gflops"], 1)
        out[f"{way}_precision"] = r["precision"]
        if "peak_gpu_mb" in r:
            out[f"{way}_peak_gpu_mb"] = round(r["peak_gpu_mb"], 1)
    if "baseline" in results:
        out["base_model_held_out_loss"] = round(results["baseline"]["held_out_loss_base"], 4)
    if "tuner" in results:
        out["peak_share"] = round(results["tuner"]["peak_share"], 4)
        out["tuner_config"] = results["tuner"]["config"]
        if table_peak:
            out["mfu_table_peak"] = round(results["tuner"]["gflops"] / table_peak, 4)
    if "trl" in results and "tuner" in results:
        r, t = results["trl"], results["tuner"]
        out["speedup_vs_trl"] = round(r["epoch_s"] / t["epoch_s"], 2)
        print(f"speedup against TRL's SFTTrainer at its best: {out['speedup_vs_trl']:.2f}x; held-out assistant loss "
              f"Tuner {t['held_out_loss']:.4f} vs TRL {r['held_out_loss']:.4f}")
    if "baseline" in results and "tuner" in results:
        b, t = results["baseline"], results["tuner"]
        out["speedup"] = round(b["epoch_s"] / t["epoch_s"], 2)
        print(f"speedup (usual epoch time / Tuner epoch time): {out['speedup']:.2f}x; Tuner at "
              f"{100 * t['peak_share']:.1f}% of the measured bf16 peak; final loss Tuner {t['final_loss']:.4f} vs "
              f"usual {b['final_loss']:.4f}; held-out assistant loss Tuner {t['held_out_loss']:.4f} vs usual "
              f"{b['held_out_loss']:.4f} (base model {b['held_out_loss_base']:.4f})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
