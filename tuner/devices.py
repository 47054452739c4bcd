"""Where a model runs and in which number format: the GPU when there is one, else the CPU.

`plan` is a pure function of what the machine has, so its choices are tested on a CPU
machine too; `for_generation` asks torch what this machine has.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda" or "cpu"
    dtype: str  # "bf16", "fp16" or "fp32"
    device_map: str | None = None  # "auto": accelerate spreads the layers over several GPUs


def plan(precision: str, gpus: int, gpu_bf16: bool, cpu_bf16_fast: bool) -> Placement:
    """Where and how a model generates.

    precision: auto, bf16 or fp32 (as Generator takes it). On a GPU, auto is bf16 where the GPU
    supports it (Ampere and newer) and fp16 on older ones; several GPUs get accelerate's
    device_map="auto" (the layers spread over them). On a CPU, auto is bf16 only where bf16
    matmuls measure at least twice as fast as fp32 (tuner.phases.cpu_bf16_speedup), else fp32.
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32 (got {precision!r})")
    if gpus > 0:
        dtype = precision if precision != "auto" else ("bf16" if gpu_bf16 else "fp16")
        return Placement("cuda", dtype, "auto" if gpus > 1 else None)
    dtype = "bf16" if precision == "bf16" or (precision == "auto" and cpu_bf16_fast) else "fp32"
    return Placement("cpu", dtype)


def for_generation(precision: str = "auto") -> Placement:
    """This machine's placement for generation (measures the CPU's bf16 speed only without a GPU)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        return plan(precision, gpus, torch.cuda.is_bf16_supported(), False)
    from tuner.train import resolve_precision

    return plan(precision, 0, False, precision == "auto" and resolve_precision("auto") == "bf16")


TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
