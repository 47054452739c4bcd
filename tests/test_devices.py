"""Where models run: the GPU when there is one (bf16 where it has it, fp16 on older GPUs,
accelerate's placement over several), else the CPU as measured. The plan is a pure function,
so its GPU choices are checked here on a CPU machine; the generator's own placement is
checked on this machine's CPU."""

from __future__ import annotations

import pytest

from tuner import devices
from tuner.generate import GenSettings, Generator


@pytest.mark.parametrize("precision, gpus, gpu_bf16, cpu_fast, expected", [
    ("auto", 1, True, False, devices.Placement("cuda", "bf16")),  # H100/H200, A100
    ("auto", 1, False, False, devices.Placement("cuda", "fp16")),  # T4, V100
    ("auto", 4, True, False, devices.Placement("cuda", "bf16", "auto")),  # spread by accelerate
    ("fp32", 1, True, False, devices.Placement("cuda", "fp32")),
    ("auto", 0, False, True, devices.Placement("cpu", "bf16")),  # a CPU whose bf16 measured ≥ 2× fp32
    ("auto", 0, False, False, devices.Placement("cpu", "fp32")),
    ("bf16", 0, False, False, devices.Placement("cpu", "bf16")),
])
def test_the_plan_puts_a_model_on_the_gpu_when_there_is_one(precision, gpus, gpu_bf16, cpu_fast, expected):
    assert devices.plan(precision, gpus, gpu_bf16, cpu_fast) == expected


def test_a_bad_precision_is_refused_by_name():
    with pytest.raises(ValueError, match="precision must be auto, bf16 or fp32 \\(got 'int8'\\)"):
        devices.plan("int8", 0, False, False)


def test_without_a_gpu_the_generator_runs_on_the_cpu_and_each_reply_says_so(tiny_llama, tmp_path):
    import torch

    generator = Generator(tmp_path / "models", precision="fp32")
    (reply,) = generator.generate(str(tiny_llama), [[{"role": "user", "content": "Hi"}]], GenSettings(max_new_tokens=3))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert generator.device == expected and str(generator.model.device).startswith(expected)
    assert reply.settings["device"] == expected and reply.settings["dtype"] == "fp32"
