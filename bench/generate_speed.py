"""Replies for 10 prompts × 2 variants (base and fine-tuned): Tuner's way against the naive way.

    python bench/generate_speed.py [--run RUN_DIR] [--max-new-tokens 128] [--batch-size N]
                                   [--naive-merged] [--ways one,tuner,naive] [--device cpu|cuda]

Each way runs in its own fresh process (so its peak resident memory is its own),
one after the other, on the bundled model, greedy, with GenSettings' defaults
otherwise (repetition penalty 1.1):

- one:   the reference for memory — transformers loads the base model once, the
         usual way (its checkpoint's fp32), and replies to one prompt. Nothing else.
- tuner: tuner.generate.Generator — one base copy; the adapter sits on a PeftModel
         over it; base and tuned rows share batches (peft's mixed-adapter
         batches, the base rows with no adapter), 20 rows a batch by default; the weights in bf16 where
         this machine's bf16 matmuls are fast (as the app does; --precision fp32
         to compare like for like).
- naive: two model copies — the base, and a second one with the adapter loaded
         by PeftModel.from_pretrained (merged into it with --naive-merged) — one
         prompt at a time.

With no --run, a 3-step LoRA adapter is trained first, in its own process (its
quality is irrelevant here; its shape is what costs). Times are wall seconds for
the 20 replies with the models loaded (loading is reported beside them); the
speedup is naive time / Tuner time. Memory is each process's peak RSS
(VmHWM), imports included. Prints the figures, the agreement of
Tuner's replies with the naive ones, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuner import records  # noqa: E402  (standard library only: no torch before the timings)

PROMPTS = """Ask a professor for feedback on a draft
Decline a social invitation politely
What is the capital of Japan?
Give me three tips for sleeping better.
Write a short thank-you note to a colleague.
Explain briefly why the sky is blue.
How do I politely ask my landlord to fix the heating?
Summarise the benefits of regular exercise in two sentences.
Can you help me plan a simple dinner for four?
Tell me how to apologise for missing a meeting."""


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss:
    Linux carries ru_maxrss over exec, so a child would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def conversations() -> list[list[dict]]:
    return [[{"role": "user", "content": line}] for line in PROMPTS.splitlines()]


# --- the workers, each in its own process ---------------------------------------------

def work_train(args) -> dict:
    from tuner.config import TrainConfig
    from tuner.paths import STARTER_DATASETS
    from tuner.train import train

    run_dir = Path(args.out_dir) / "run"
    run_dir.mkdir(parents=True)
    train(TrainConfig(dataset=str(STARTER_DATASETS / "polite_assistant.jsonl"), max_steps=3, save_steps=100,
                      learning_rate=1e-3), run_dir, models_dir=Path(args.models_dir))
    return {"adapter": str(records.adapter_dir(run_dir))}


def _hf_generate(model, tokenizer, conversation, settings) -> tuple[str, int]:
    """One prompt, the plain transformers way."""
    import torch

    enc = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True,
                                        return_tensors="pt").to(model.device)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=settings.max_new_tokens, do_sample=False, temperature=None,
                             top_p=None, top_k=None, repetition_penalty=settings.repetition_penalty,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[0, enc["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True).strip(), int((new != tokenizer.pad_token_id).sum())


def work_one(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner.generate import GenSettings

    folder = Path(args.models_dir) / args.model
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).to(args.device).eval()
    load_s = time.perf_counter() - start
    settings = GenSettings(max_new_tokens=args.max_new_tokens)
    start = time.perf_counter()
    text, tokens = _hf_generate(model, tokenizer, conversations()[0], settings)
    return {"load_s": load_s, "gen_s": time.perf_counter() - start, "new_tokens": tokens,
            "replies": {"base": [text]}}


def work_naive(args) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner.generate import GenSettings

    folder = Path(args.models_dir) / args.model
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder).to(args.device).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), args.adapter)
    if args.naive_merged:
        tuned = tuned.merge_and_unload()
    tuned = tuned.to(args.device).eval()
    load_s = time.perf_counter() - start
    settings = GenSettings(max_new_tokens=args.max_new_tokens)
    replies, tokens = {"base": [], "tuned": []}, 0
    start = time.perf_counter()
    for variant, model in (("base", base), ("tuned", tuned)):
        for conversation in conversations():
            text, n = _hf_generate(model, tokenizer, conversation, settings)
            replies[variant].append(text)
            tokens += n
    return {"load_s": load_s, "gen_s": time.perf_counter() - start, "new_tokens": tokens, "replies": replies}


def work_tuner(args) -> dict:
    from tuner.generate import GenSettings, Generator

    generator = Generator(Path(args.models_dir), precision=args.precision)
    adapter = ("tuned", Path(args.adapter))
    start = time.perf_counter()
    generator.load(args.model, [adapter])
    load_s = time.perf_counter() - start
    settings = GenSettings(max_new_tokens=args.max_new_tokens,
                           **({"batch_size": args.batch_size} if args.batch_size else {}))
    start = time.perf_counter()
    base, tuned = generator.generate_all(args.model, conversations(), settings, [None, adapter])
    gen_s = time.perf_counter() - start
    return {"load_s": load_s, "gen_s": gen_s, "new_tokens": sum(r.new_tokens for r in base + tuned),
            "batch_size": settings.batch_size, "dtype": generator.dtype, "device": generator.device,
            "replies": {"base": [r.text for r in base], "tuned": [r.text for r in tuned]}}


WORKERS = {"train": work_train, "one": work_one, "tuner": work_tuner, "naive": work_naive}


def worker_main(args) -> None:
    result = WORKERS[args.worker](args)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


# --- the orchestrator ---------------------------------------------------------------

def spawn(way: str, args, **extra) -> dict:
    command = [sys.executable, __file__, "--worker", way, "--models-dir", str(args.models_dir),
               "--max-new-tokens", str(args.max_new_tokens), "--model", args.model]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    if args.naive_merged:
        command.append("--naive-merged")
    command += ["--precision", args.precision, "--device", args.device]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # on a GPU machine too: Tuner's Generator would pick the GPU
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"the {way!r} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_s"] = wall  # imports, load and generation
    return result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a run folder with adapter/ (default: train a 3-step adapter)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=0, help="Tuner's batch size (default: GenSettings')")
    parser.add_argument("--naive-merged", action="store_true", help="merge the adapter into the naive second copy")
    parser.add_argument("--ways", default="one,tuner,naive")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="Tuner's generation dtype (auto: bf16 where bf16 matmuls are fast, as the app does)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where every way generates (cuda: the first GPU; Tuner's Generator places itself)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: this machine has no CUDA GPU that torch can use "
                     f"(torch {torch.__version__}); run without --device for the CPU")
    from tuner import models
    from tuner.paths import Layout, data_root

    args.model = models.BUNDLED
    args.models_dir = Layout(data_root()).models
    models.resolve(models.BUNDLED, args.models_dir)  # convert once, outside every timing
    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            adapter = records.adapter_dir(Path(args.run))
        else:
            print("training a 3-step adapter…", flush=True)
            adapter = spawn("train", args, out_dir=tmp)["adapter"]
        results = {}
        for way in args.ways.split(","):
            results[way] = spawn(way, args, adapter=adapter)
            r = results[way]
            print(f"{way:>6}: load {r['load_s']:.1f} s, generate {r['gen_s']:.1f} s "
                  f"({r['new_tokens']} new tokens, {r['new_tokens'] / r['gen_s']:.1f} tokens/s), "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB, process {r['process_s']:.1f} s", flush=True)

    summary = {"benchmark": "generate_speed", "device": args.device, "prompts": len(conversations()), "variants": 2,
               "max_new_tokens": args.max_new_tokens, "greedy": True,
               "naive_adapter": "merged" if args.naive_merged else "peft"}
    for way, r in results.items():
        summary[f"{way}_s"] = round(r["gen_s"], 2)
        summary[f"{way}_load_s"] = round(r["load_s"], 2)
        summary[f"{way}_peak_rss_mb"] = round(r["peak_rss_mb"])
        summary[f"{way}_new_tokens"] = r["new_tokens"]
    if "tuner" in results:
        summary["tuner_batch_size"] = results["tuner"]["batch_size"]
        summary["tuner_dtype"] = results["tuner"]["dtype"]
        summary["tuner_device"] = results["tuner"].get("device")
    if {"tuner", "naive"} <= results.keys():
        tuner, naive = results["tuner"], results["naive"]
        summary["speedup"] = round(naive["gen_s"] / tuner["gen_s"], 2)
        summary["speedup_with_loading"] = round((naive["gen_s"] + naive["load_s"]) /
                                                (tuner["gen_s"] + tuner["load_s"]), 2)
        same = {v: sum(a == b for a, b in zip(tuner["replies"][v], naive["replies"][v])) for v in ("base", "tuned")}
        summary["replies_identical_to_naive"] = same
        print(f"speedup (naive / Tuner): {summary['speedup']}× generating, "
              f"{summary['speedup_with_loading']}× with loading; Tuner's replies identical to the naive ones: "
              f"base {same['base']}/10, tuned {same['tuned']}/10")
        for v in ("base", "tuned"):
            print(f"  {v} reply 3, Tuner: {tuner['replies'][v][2][:150]!r}")
            print(f"  {v} reply 3, naive: {naive['replies'][v][2][:150]!r}")
    if {"tuner", "one"} <= results.keys():
        summary["one_model_peak_rss_mb"] = summary.pop("one_peak_rss_mb")
        summary["memory_ratio"] = round(results["tuner"]["peak_rss_mb"] / results["one"]["peak_rss_mb"], 3)
        print(f"Tuner's peak / one model's peak: {summary['memory_ratio']} "
              f"({summary['tuner_peak_rss_mb']} / {summary['one_model_peak_rss_mb']} MB)")
    load = os.getloadavg()
    summary.update(date=datetime.date.today().isoformat(),
                   machine=f"{os.cpu_count()} cores, {cpu_name()}, torch {_version('torch')}",
                   load_avg_1m_at_end=round(load[0], 2))
    print(json.dumps(summary))


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
