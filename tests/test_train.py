import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import POLITE, chat, write_jsonl
from tuner import records
from tuner import train as ttrain
from tuner.config import TrainConfig
from tuner.runs import RunBusy, RunManager, RunState

ROOT = Path(__file__).resolve().parent.parent
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _weights(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _overfit_rows(n=12):
    return [chat(f"Say the word number {i}.", f"Certainly! The word is apple{i % 3}.") for i in range(n)]


def test_config_rejects_bad_combinations_with_a_message():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=0.5)  # far past any rate that trains
    with pytest.raises(ValueError, match="num_train_epochs > 0 or max_steps"):
        TrainConfig(num_train_epochs=0, max_steps=-1)
    with pytest.raises(ValueError, match="use_dora and use_rslora apply to LoRA only"):
        TrainConfig(method="prompt_tuning", use_dora=True)
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        TrainConfig(lr_scheduler_type="exponential")
    with pytest.raises(ValueError, match="at least 10% of the rows"):
        TrainConfig(validation_fraction=0.5, test_fraction=0.45)
    with pytest.raises(ValueError, match="Unknown training setting"):
        TrainConfig.from_dict({"lora_rank": 4})


def test_qlora_is_refused_on_a_machine_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="needs a CUDA GPU.*Choose method 'lora'"):
        ttrain.check_machine(TrainConfig(method="qlora"))


def test_detects_llama_falcon_and_gpt2_module_names(tiny_llama):
    from transformers import (AutoModelForCausalLM, FalconConfig, FalconForCausalLM, GPT2Config,
                              GPT2LMHeadModel)

    attention, linear = ttrain.detect_target_modules(AutoModelForCausalLM.from_pretrained(tiny_llama))
    assert attention == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert {"gate_proj", "up_proj", "down_proj"} <= set(linear) and "lm_head" not in linear
    falcon = FalconForCausalLM(FalconConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=4))
    attention, linear = ttrain.detect_target_modules(falcon)
    assert attention == ["query_key_value", "dense"]
    assert {"dense_h_to_4h", "dense_4h_to_h"} <= set(linear)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=4))
    attention, linear = ttrain.detect_target_modules(gpt2)
    assert attention == ["c_attn"] and {"c_attn", "c_proj", "c_fc"} <= set(linear)


def test_lora_trains_a_falcon_model_built_from_config(tmp_path, smollm2_tokenizer):
    """A non-Llama architecture whose modules have other names."""
    from transformers import AutoTokenizer, FalconConfig, FalconForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer)
    model = FalconForCausalLM(FalconConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, initializer_range=0.2))
    folder = tmp_path / "tiny-falcon"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    dataset = write_jsonl(tmp_path / "d.jsonl", _overfit_rows(8))
    manager = RunManager(tmp_path / "runs", tmp_path / "models")
    manager.start(TrainConfig(base_model=str(folder), dataset=str(dataset), max_steps=4, test_fraction=0,
                              validation_fraction=0, lr_scheduler_type="cosine", learning_rate=1e-2))
    state = manager.wait(120)
    assert state.status == "completed", state.message
    assert state.summary["target_modules"] == ["query_key_value", "dense"]
    weights = _weights(tmp_path / "runs" / state.run_id)
    assert any("query_key_value.lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())


def test_packed_batches_give_the_same_loss_as_padded_ones(tiny_llama):
    """Padding-free packing must not let examples attend to each other."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner.chat import PackCollator, PadCollator, encode_example

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config.use_cache = False  # as train() sets it
    rows = [json.loads(line) for line in POLITE.read_text().splitlines()[:4]]
    features = [encode_example(r["messages"], tok, 256) for r in rows]
    model.train()
    with torch.no_grad():
        packed = model(**PackCollator()(features)).loss
        padded = model(**PadCollator(tok.pad_token_id)(features)).loss
        # the logits of the labelled positions only, as train() asks of models that allow it
        batch = PackCollator(labelled_logits_only=True)(features)
        sliced = model(**batch)
    assert torch.allclose(packed, padded, atol=1e-5)
    assert torch.allclose(sliced.loss, packed, atol=1e-5)
    assert sliced.logits.shape[-2] == int(batch["logits_to_keep"].sum()) == len(batch["shift_labels"])
    assert ttrain.accepts_logits_to_keep(model)


def test_the_example_boundaries_are_read_once_per_forward_not_once_per_layer(tiny_llama, monkeypatch):
    """On a GPU each read of the boundaries tensor is a device-to-host sync: every
    layer gets the same tensor, so it is read once a forward pass."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner import packed_attention
    from tuner.chat import PackCollator, encode_example

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    rows = [json.loads(line) for line in POLITE.read_text().splitlines()[:3]]
    collate = PackCollator(labelled_logits_only=True, boundaries=True, multiple_of=64, pad_token_id=tok.pad_token_id)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert packed_attention.use_for_packed_training(model)
    reads = []

    class Counted(torch.Tensor):  # the boundaries tensor, counting its reads to Python
        def tolist(self):
            reads.append(1)
            return super().tolist()

    layers = model.get_base_model().config.num_hidden_layers
    assert layers >= 2
    for _ in range(2):  # two steps: each new batch's boundaries are read afresh
        batch = collate([encode_example(r["messages"], tok, 256) for r in rows])
        batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = batch["cu_seq_lens_q"].as_subclass(Counted)
        model(**batch).loss.backward()
    packed_attention.restore_sdpa(model)
    assert len(reads) == 2  # one a forward pass, not one a layer (that was 2 × layers)


@pytest.mark.parametrize("kernel", ["sdpa", "explicit"])
def test_per_example_attention_and_rounded_rows_give_the_same_loss_and_gradients(tiny_llama, kernel, monkeypatch):
    """train()'s packed batches: attention per example (tuner.packed_attention), with
    either kernel, and the row and the head's positions rounded up to a multiple of 64
    change nothing learned."""
    monkeypatch.setenv("TUNER_PACKED_KERNEL", kernel)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner import packed_attention
    from tuner.chat import PackCollator, PadCollator, encode_example

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    rows = [json.loads(line) for line in POLITE.read_text().splitlines()[:4]]
    features = [encode_example(r["messages"], tok, 256) for r in rows]
    useful = sum(len(f["input_ids"]) for f in features)

    def loss_and_grads(per_example: bool, collator):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        model.config.use_cache = False
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
        if per_example:
            assert packed_attention.use_for_packed_training(model)
            with pytest.raises(ValueError, match="packed rows"):  # it never attends across padding
                model(**PadCollator(tok.pad_token_id)(features))
        model.train()
        loss = model(**collator(features)).loss
        loss.backward()
        if per_example:
            packed_attention.restore_sdpa(model)
            assert model.get_base_model().config._attn_implementation == "sdpa"
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    padded, padded_grads = loss_and_grads(False, PadCollator(tok.pad_token_id))
    rounded = PackCollator(labelled_logits_only=True, boundaries=True, multiple_of=64, pad_token_id=tok.pad_token_id)
    batch = rounded(features)
    assert batch["input_ids"].shape[1] % 64 == 0 and 0 < batch["input_ids"].shape[1] - useful < 64  # a pad tail
    learned = int((batch["shift_labels"] != -100).sum())
    assert int(batch["logits_to_keep"].sum()) % 64 == 0 and int(batch["logits_to_keep"].sum()) > learned
    assert batch["cu_seq_lens_q"].tolist()[:5] == [0, *itertools.accumulate(len(f["input_ids"]) for f in features)]
    assert rounded.tokens == useful  # the pad tail is not counted as trained tokens
    packed, packed_grads = loss_and_grads(True, rounded)
    assert torch.allclose(packed, padded, atol=1e-5)
    for name, grad in padded_grads.items():
        assert torch.allclose(packed_grads[name], grad, atol=1e-5, rtol=1e-4), name


def test_explicit_attention_equals_sdpa_per_example_with_grouped_heads(monkeypatch):
    """explicit_causal against SDPA on each example alone (float64: exact to rounding):
    grouped-query heads, uneven and one-token examples, an empty span, and an example
    past EXPLICIT_MAX_LEN (which goes to SDPA); outputs and all three gradients."""
    from transformers.integrations.sdpa_attention import repeat_kv

    from tuner import packed_attention

    monkeypatch.setattr(packed_attention, "EXPLICIT_MAX_LEN", 30)
    edges = [0, 5, 17, 17, 40, 41, 60, 100]  # 17→17 empty; 60→100 is past the cap
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, heads, 100, 8, generator=gen, dtype=torch.float64, requires_grad=True)
               for heads in (6, 2, 2))
    out = packed_attention.explicit_causal(q, k, v, edges, scaling=0.3)
    grads = torch.autograd.grad((out * torch.arange(out.numel()).view_as(out).sin()).sum(), [q, k, v])
    kk, vv = repeat_kv(k, 3), repeat_kv(v, 3)
    ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[:, :, a:b], kk[:, :, a:b], vv[:, :, a:b], is_causal=True, scale=0.3)
        for a, b in zip(edges[:-1], edges[1:]) if b > a], dim=2)
    ref_grads = torch.autograd.grad((ref * torch.arange(ref.numel()).view_as(ref).sin()).sum(), [q, k, v])
    assert out.shape == ref.shape == (1, 6, 100, 8)
    assert torch.allclose(out, ref, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-10)
    # a query sees its own example only: changing another example's keys changes nothing here
    k2 = k.detach().clone()
    k2[:, :, 17:40] += torch.randn(1, 2, 23, 8, generator=gen, dtype=torch.float64)
    again = packed_attention.explicit_causal(q.detach(), k2, v.detach(), edges, scaling=0.3)
    assert torch.equal(again[:, :, :17], out.detach()[:, :, :17])
    assert not torch.allclose(again[:, :, 17:40], out.detach()[:, :, 17:40])


def test_explicit_attention_takes_a_value_head_of_another_width():
    """(as DeepSeek-style attention has: values narrower than queries and keys)"""
    from tuner import packed_attention

    gen = torch.Generator().manual_seed(4)
    q, k = (torch.randn(1, h, 12, 16, generator=gen, dtype=torch.float64) for h in (4, 2))
    v = torch.randn(1, 2, 12, 8, generator=gen, dtype=torch.float64)
    out = packed_attention.explicit_causal(q, k, v, [0, 5, 12])
    vv = v.repeat_interleave(2, dim=1)
    ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[:, :, a:b], k.repeat_interleave(2, dim=1)[:, :, a:b], vv[:, :, a:b], is_causal=True)
        for a, b in ((0, 5), (5, 12))], dim=2)
    assert out.shape == (1, 4, 12, 8) and torch.allclose(out, ref, atol=1e-12)


def test_a_row_too_big_for_explicit_attention_goes_to_sdpa_and_the_record_says_so(tiny_llama, monkeypatch):
    """The explicit kernel keeps heads × L² softmax entries a layer for the backward pass: a
    row over EXPLICIT_BUDGET goes to SDPA, even where explicit is forced; the kernels used
    are what run.json records."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner import packed_attention
    from tuner.chat import PackCollator, encode_example

    monkeypatch.setenv("TUNER_PACKED_KERNEL", "explicit")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    rows = [json.loads(line) for line in POLITE.read_text().splitlines()[:3]]
    batch = PackCollator(labelled_logits_only=True, boundaries=True, multiple_of=64,
                         pad_token_id=tok.pad_token_id)([encode_example(r["messages"], tok, 256) for r in rows])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert packed_attention.use_for_packed_training(model)
    model(**batch).loss.backward()
    assert packed_attention.kernels_used == {"explicit"}
    monkeypatch.setattr(packed_attention, "EXPLICIT_BUDGET", 0)
    packed_attention.restore_sdpa(model)
    assert packed_attention.use_for_packed_training(model)  # a new run starts a new record
    assert packed_attention.kernels_used == set()
    model(**batch).loss.backward()
    assert packed_attention.kernels_used == {"sdpa"}
    packed_attention.restore_sdpa(model)


def test_the_attention_kernel_is_measured_or_forced(monkeypatch):
    """On a CPU the kernel is the one the probe measured faster (a name, cached per
    shape); TUNER_PACKED_KERNEL forces either; anything else there means measure."""
    from tuner import packed_attention

    q, k = torch.zeros(1, 4, 8, 16), torch.zeros(1, 2, 8, 16)
    monkeypatch.setenv("TUNER_PACKED_KERNEL", "explicit")
    assert packed_attention.kernel(q, k) == "explicit"
    monkeypatch.setenv("TUNER_PACKED_KERNEL", "sdpa")
    assert packed_attention.kernel(q, k) == "sdpa"
    monkeypatch.setenv("TUNER_PACKED_KERNEL", "flash-typo")
    measured = packed_attention.kernel(q, k)
    assert measured in packed_attention.KERNELS
    assert packed_attention._probe.cache_info().currsize >= 1
    assert packed_attention.kernel(q, k) == measured  # measured once


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_chunked_loss_equals_transformers_causal_lm_loss(dtype):
    """tuner.cross_entropy against transformers' ForCausalLMLoss: labels shifted or given
    shifted, ignored rows, a row count that is not a multiple of the chunk, with and
    without num_items_in_batch; the loss and the logits' gradient."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    from tuner import cross_entropy

    gen = torch.Generator().manual_seed(5)
    vocab = 300
    logits = (torch.randn(2, 37, vocab, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, vocab, (2, 37), generator=gen)
    labels[0, :9] = -100
    labels[1, 30:] = -100
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()
    for kwargs in ({"labels": labels}, {"labels": None, "shift_labels": shifted},
                   {"labels": labels, "num_items_in_batch": torch.tensor(40)}):
        got_in, want_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        got = cross_entropy.causal_lm_loss(got_in, vocab_size=vocab, **kwargs)
        want = ForCausalLMLoss(want_in, vocab_size=vocab, **kwargs)
        got.backward()
        want.backward()
        assert got.dtype == want.dtype == torch.float32
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-6), (kwargs, got, want)
        tolerance = 1e-7 if dtype == torch.float32 else 2e-3  # bf16: the gradient's own rounding
        assert got_in.grad.dtype == dtype
        assert torch.allclose(got_in.grad.float(), want_in.grad.float(), atol=tolerance), kwargs
        assert not got_in.grad[0, :8].any()  # ignored rows (their shifted label is -100) get none
    # no labelled row at all: the loss is NaN in both, and the gradient zero, not NaN
    none = torch.full_like(labels, -100)
    got_in, want_in = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    cross_entropy.causal_lm_loss(got_in, none, vocab_size=vocab).backward()
    ForCausalLMLoss(want_in, none, vocab_size=vocab).backward()
    assert not got_in.grad.any() and not want_in.grad.any()


def test_training_on_a_cpu_uses_the_chunked_loss(tiny_llama, tmp_path):
    """train() gives the model tuner.cross_entropy's loss on a CPU; run.json says which loss ran."""
    from tuner.config import TrainConfig
    from tuner.train import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = train(TrainConfig(base_model=str(tiny_llama), dataset=str(POLITE), max_steps=2, save_steps=100),
                    run_dir)
    assert summary["loss"] == ("transformers" if torch.cuda.is_available() else "chunked")
    assert math.isfinite(summary["final_loss"])


def test_auto_precision_is_fp32_or_bf16_by_this_machine(monkeypatch):
    """auto on a CPU: bf16 only where bf16 matmuls measure at least twice fp32's speed."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from tuner import phases

    assert phases.resolve_precision("fp32") == "fp32" and phases.resolve_precision("bf16") == "bf16"
    monkeypatch.setattr(phases, "cpu_bf16_speedup", lambda: 0.5)
    assert phases.resolve_precision("auto") == "fp32"
    monkeypatch.setattr(phases, "cpu_bf16_speedup", lambda: 2.9)
    assert phases.resolve_precision("auto") == "bf16"


def test_bf16_run_keeps_a_bf16_base_and_fp32_adapters(tiny_llama, tmp_path, monkeypatch):
    """precision bf16 on a CPU: frozen base weights in bf16, trainable weights in fp32."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    seen = {}
    real = PeftModel.save_pretrained

    def spy(self, *args, **kwargs):
        params = dict(self.named_parameters())
        seen["frozen"] = {p.dtype for p in params.values() if not p.requires_grad}
        seen["trainable"] = {p.dtype for p in params.values() if p.requires_grad}
        seen["peft_casts"] = {m.cast_input_dtype_enabled for m in self.modules() if isinstance(m, BaseTunerLayer)}
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PeftModel, "save_pretrained", spy)
    dataset = write_jsonl(tmp_path / "d.jsonl", _overfit_rows(8))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = ttrain.train(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), max_steps=3,
                                       precision="bf16", test_fraction=0, validation_fraction=0),
                           run_dir, models_dir=tmp_path / "models")
    assert summary["status"] == "completed" and summary["precision"] == "bf16"
    # under autocast peft's own casts of LoRA inputs to fp32 are off (autocast picks the dtype)
    assert seen == {"frozen": {torch.bfloat16}, "trainable": {torch.float32}, "peft_casts": {False}}
    assert all(v.dtype == torch.float32 for v in _weights(run_dir).values())


def test_lora_run_loss_falls_weights_change_and_folder_is_complete(tiny_llama, home, tmp_path):
    dataset = write_jsonl(tmp_path / "overfit.jsonl", _overfit_rows(12) + _overfit_rows(4))
    config = TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), learning_rate=3e-2,
                         num_train_epochs=8, per_device_train_batch_size=4, target_modules=ALL_LINEAR,
                         lora_dropout=0.0, test_fraction=0.0, validation_fraction=0.25, eval_steps=4,
                         save_steps=5, save_total_limit=2, precision="fp32")
    manager = RunManager(home.runs, home.models)
    run_id = manager.start(config)
    state = manager.wait(timeout=300)
    assert state.status == "completed", state.message
    run_dir = home.runs / run_id
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["config"]["learning_rate"] == 3e-2
    summary = record["summary"]
    for key in ("status", "train_runtime", "final_loss", "best_eval_loss", "trainable_params",
                "trainable_percent"):
        assert summary[key] is not None, key
    assert summary["packing"] and summary["attention"] in ("per example (sdpa)", "per example (explicit)",
                                                       "per example (explicit, sdpa)")  # tuner.packed_attention
    metrics = records.read_metrics(run_dir)
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == state.max_steps
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    assert all("step" in m and "epoch" in m for m in metrics)
    assert [m["step"] for m in metrics if "eval_loss" in m][:2] == [4, 8]
    assert any("tokens_per_second" in m and "learning_rate" in m for m in metrics)
    assert len(list((run_dir / "checkpoints").glob("checkpoint-*"))) <= 2  # save_total_limit
    lora_b = [v for k, v in _weights(run_dir).items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # peft starts lora_B at zero


def test_stop_ends_the_run_within_two_steps_and_keeps_a_checkpoint(tiny_llama, home, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [chat(f"Question {i}?", f"Answer {i}.") for i in range(8)])
    manager = RunManager(home.runs, home.models)
    manager.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), max_steps=500,
                              per_device_train_batch_size=1, save_steps=1000))
    while manager.snapshot().step < 3:
        time.sleep(0.05)
    with pytest.raises(RunBusy, match="still running"):
        manager.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset)))
    asked_at = manager.snapshot().step
    assert manager.stop()
    state = manager.wait(timeout=120)
    assert state.status == "stopped"
    assert state.summary["global_step"] - asked_at <= 2
    run_dir = home.runs / state.run_id
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert records.last_complete_checkpoint(run_dir) is not None  # resumable


@pytest.mark.slow
def test_a_stopped_and_resumed_run_records_the_time_and_tokens_of_both_segments(tiny_llama, home, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [chat(f"Question {i}?", f"Answer {i}.") for i in range(8)])
    manager = RunManager(home.runs, home.models)
    run_id = manager.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), max_steps=500,
                                       per_device_train_batch_size=1, save_steps=1000, test_fraction=0,
                                       validation_fraction=0))
    while manager.snapshot().step < 3:
        time.sleep(0.05)
    manager.stop()
    assert manager.wait(timeout=120).status == "stopped"
    run_dir = home.runs / run_id
    record = json.loads((run_dir / "run.json").read_text())
    [first] = record["segments"]
    assert first["status"] == "stopped" and first["train_tokens"] > 0 and first["train_runtime"] > 0
    assert record["summary"]["train_runtime"] == first["train_runtime"]
    stopped_at = first["to_step"]
    record["config"]["max_steps"] = stopped_at + 4  # the rest of the run, short
    (run_dir / "run.json").write_text(json.dumps(record))

    manager.resume(run_id)
    resumed = manager.snapshot()  # the line right after Resume: the first segment's time and step speed
    assert resumed.first_step == stopped_at and resumed.earlier_seconds == first["train_runtime"]
    assert resumed.earlier_step_seconds == first["loop_runtime"] / stopped_at
    state = manager.wait(timeout=120)
    assert state.status == "completed", state.message
    record = json.loads((run_dir / "run.json").read_text())
    first_again, second = record["segments"]
    assert first_again == first  # the first segment's figures are kept as they were
    assert (second["from_step"], second["to_step"], second["status"]) == (stopped_at, stopped_at + 4, "completed")
    summary = record["summary"]
    assert summary["train_runtime"] == round(first["train_runtime"] + second["train_runtime"], 2)
    assert summary["train_runtime"] > first["train_runtime"] and summary["train_runtime"] > second["train_runtime"]
    assert summary["train_tokens"] == first["train_tokens"] + second["train_tokens"] > first["train_tokens"] > 0
    # the tokens of the whole run's epochs: the segments meet at the checkpoint
    assert abs(summary["train_tokens"] - second["tokens_per_epoch"] * second["to_epoch"]) <= 1
    assert "segment" not in record and "segment" not in summary


def test_the_remaining_time_goes_by_the_steps_left_and_their_measured_speed():
    now = 1000.0
    # right after Resume at step 30 of 60: no step timed yet here, the earlier segment took 1 s a step
    state = RunState(run_id="r", status="running", step=30, max_steps=60, started=now - 2, first_step=30,
                     earlier_seconds=40.0, earlier_step_seconds=1.0)
    line = state.progress_line(now)
    assert "elapsed 0:42" in line and "remaining ~0:30" in line
    # five steps later, timed in this process at 2 s a step
    state.step, state.first_step_at = 35, now - 10
    assert "remaining ~0:50" in state.progress_line(now)
    # a fresh run: measured from its loop's start, not from Start (loading the model is not a step)
    fresh = RunState(run_id="r", status="running", step=10, max_steps=20, started=now - 30, first_step_at=now - 10)
    assert "remaining ~0:10" in fresh.progress_line(now)


def test_forced_nan_marks_the_run_diverged(tiny_llama, home, tmp_path):
    from safetensors.torch import save_file

    broken = tmp_path / "nan-model"
    broken.mkdir()
    for f in Path(tiny_llama).iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(broken / "model.safetensors"))
    key = next(k for k in weights if k.endswith("norm.weight"))
    weights[key][:] = float("nan")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    dataset = write_jsonl(tmp_path / "d.jsonl", _overfit_rows(8))
    manager = RunManager(home.runs, home.models)
    manager.start(TrainConfig(base_model=str(broken), dataset=str(dataset), max_steps=20, test_fraction=0,
                              validation_fraction=0))
    state = manager.wait(timeout=120)
    assert state.status == "diverged"
    assert "NaN" in state.message
    assert state.summary["global_step"] < 20
    assert manager.runs()[0]["status"] == "diverged"


def test_failure_in_training_thread_is_reported_not_raised(home, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [chat("hi", "hello")] * 3)
    manager = RunManager(home.runs, home.models)
    manager.start(TrainConfig(base_model=str(tmp_path / "no-such-model-folder"), dataset=str(dataset)))
    state = manager.wait(timeout=60)
    assert state.status == "failed"
    assert "no-such-model-folder" in state.message
    assert [r["status"] for r in manager.runs()] == ["failed"]


@pytest.mark.slow
def test_cli_run_killed_mid_way_resumes_and_continues_its_step_count(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [chat(f"Q{i}?", f"A{i}.") for i in range(10)])
    out = tmp_path / "runs"
    config = {"base_model": str(tiny_llama), "dataset": "d.jsonl", "method": "lora", "output_dir": str(out),
              "max_steps": 400, "per_device_train_batch_size": 1, "save_steps": 3, "save_total_limit": 2,
              "test_fraction": 0, "validation_fraction": 0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = dict(os.environ, TUNER_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "train", str(tmp_path / "config.json"),
                             "--run-id", "killed"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = out / "killed"
    deadline = time.time() + 180
    while time.time() < deadline and not (run_dir / "checkpoints" / "checkpoint-6" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["max_steps"] == 400 and record["status"] == "running"  # as the kill left it

    manager = RunManager(out, tmp_path / "home" / "models")
    assert manager.get("killed")["status"] == "interrupted"
    checkpoint = records.last_complete_checkpoint(run_dir)
    resumed_from = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    assert resumed_from >= 6
    # shorten the rest of the run: resume reads the config from run.json
    record["config"]["max_steps"] = resumed_from + 4
    (run_dir / "run.json").write_text(json.dumps(record))
    manager.resume("killed")
    state = manager.wait(timeout=180)
    assert state.status == "completed", state.message
    steps = [m["step"] for m in records.read_metrics(run_dir) if "loss" in m]
    assert steps == list(range(1, resumed_from + 5))  # continued, no step twice, none missing
    assert state.summary["global_step"] == resumed_from + 4
    # the killed segment's time and tokens count too: to its last write, and its epochs' tokens
    record = json.loads((run_dir / "run.json").read_text())
    killed, resumed = record["segments"]
    assert killed["status"] == "interrupted" and killed["to_step"] >= resumed_from == resumed["from_step"]
    assert killed["train_runtime"] > 0 and killed["train_tokens"] > 0
    assert record["summary"]["train_tokens"] == killed["train_tokens"] + resumed["train_tokens"]
    assert record["summary"]["train_runtime"] == round(killed["train_runtime"] + resumed["train_runtime"], 2)


@pytest.mark.slow
def test_cli_writes_the_run_folder(tiny_llama, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", _overfit_rows(6))
    config = {"base_model": str(tiny_llama), "dataset": str(dataset), "max_steps": 2,
              "output_dir": str(tmp_path / "out"), "lr_scheduler_type": "cosine"}
    (tmp_path / "c.json").write_text(json.dumps(config))
    env = dict(os.environ, TUNER_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "tuner", "train", str(tmp_path / "c.json")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = (tmp_path / "out").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["summary"]["global_step"] == 2
    assert record["config"]["lr_scheduler_type"] == "cosine"
    assert len(records.read_metrics(run_dir)) >= 2
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    # the held-out rows are in the run folder exactly as split, and any tool can evaluate on them
    from tuner import data as tdata

    rows = tdata.load_jsonl(dataset).rows
    parts = tdata.splits(rows, record["config"]["validation_fraction"], record["config"]["test_fraction"],
                         record["config"]["seed"])
    for name in ("test", "validation"):
        assert tdata.load_jsonl(run_dir / f"{name}.jsonl").rows == parts[name]
    assert parts["test"]
    out = tmp_path / "replies.jsonl"
    done = subprocess.run([sys.executable, "-m", "tuner", "generate", "--run", str(run_dir), "--prompts",
                           str(run_dir / "test.jsonl"), "--out", str(out), "--max-new-tokens", "4"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    replies = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in replies] == [tdata.last_user_text(r) for r in parts["test"]] * 2
    assert [r["reference"] for r in replies] == [r["messages"][-1]["content"] for r in parts["test"]] * 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": str(dataset), "lora_rank": 3}))
    done = subprocess.run([sys.executable, "-m", "tuner", "train", str(bad)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Unknown training setting(s): lora_rank" in done.stderr


def test_a_stratified_run_holds_out_each_difficultys_share(tiny_llama, tmp_path):
    from tuner import data as tdata

    rows = [chat(f"Question {i}?", f"Answer {i}.", difficulty=("easy", "medium", "hard")[i % 3], answer=f"{i}")
            for i in range(30)]
    dataset = write_jsonl(tmp_path / "faq.jsonl", rows)
    config = TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), max_steps=1, validation_fraction=0.2,
                         test_fraction=0.1, stratify_by="difficulty", neftune_noise_alpha=5.0)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    summary = ttrain.train(config, run_dir, models_dir=tmp_path / "models")
    assert summary["status"] == "completed"
    test = tdata.load_jsonl(run_dir / "test.jsonl").rows
    assert sorted(r["difficulty"] for r in test) == ["easy", "hard", "medium"]  # one of each ten
    assert test == tdata.splits(rows, 0.2, 0.1, config.seed, "difficulty")["test"]
    assert len(tdata.load_jsonl(run_dir / "validation.jsonl").rows) == 6


def test_bundled_smollm2_trains_a_few_steps(bundled_models_dir, tmp_path):
    """The real bundled model: LoRA weights change and the loss falls."""
    rows = [json.loads(line) for line in POLITE.read_text().splitlines()[:4]]
    dataset = write_jsonl(tmp_path / "four.jsonl", rows)
    config = TrainConfig(dataset=str(dataset), max_steps=6, per_device_train_batch_size=4,
                         learning_rate=1e-3, test_fraction=0.0, validation_fraction=0.0, lora_dropout=0.0)
    runs = tmp_path / "runs"
    manager = RunManager(runs, bundled_models_dir)
    manager.start(config)
    state = manager.wait(timeout=600)
    assert state.status == "completed", state.message
    losses = [r["loss"] for r in state.rows if "loss" in r]
    assert len(losses) == 6
    assert losses[-1] < losses[0]
    weights = _weights(runs / state.run_id)
    assert any("q_proj.lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling classes")
def test_the_training_thread_takes_the_cpu_only_when_the_server_leaves_it():
    import threading

    from tuner.runs import TRAIN_NICENESS, yield_to_server

    seen = {}

    def work():
        yield_to_server()
        seen["train"] = os.sched_getscheduler(threading.get_native_id())
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        child = threading.Thread(target=lambda: seen.update(child=os.sched_getscheduler(threading.get_native_id())))
        child.start()  # a thread it starts (torch's pool) inherits the class
        child.join()

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    nice = seen.pop("nice")
    if seen["train"] != os.SCHED_IDLE:  # a kernel or sandbox that refuses SCHED_IDLE: the fallback
        assert nice == TRAIN_NICENESS and seen["child"] == seen["train"]
    else:
        assert seen == {"train": os.SCHED_IDLE, "child": os.SCHED_IDLE}
    assert os.sched_getscheduler(threading.get_native_id()) != os.SCHED_IDLE  # the server's threads: untouched


def test_the_chunked_loss_switched_off_trains_with_transformers_loss_and_run_json_says_so(
        tiny_llama, tmp_path, monkeypatch):
    """TUNER_CHUNKED_LOSS=0: a run on a CPU trains with transformers' own loss (tuner.cross_entropy's
    is never called) and run.json's summary records it, as it records the attention kernel."""
    from tuner import cross_entropy
    from tuner.paths import STARTER_DATASETS

    calls = []
    chunked = cross_entropy.causal_lm_loss
    monkeypatch.setattr(cross_entropy, "causal_lm_loss", lambda *a, **kw: calls.append(1) or chunked(*a, **kw))
    monkeypatch.setenv("TUNER_CHUNKED_LOSS", "0")
    manager = RunManager(tmp_path / "runs", tmp_path / "models")
    manager.start(TrainConfig(base_model=str(tiny_llama), dataset=str(STARTER_DATASETS / "polite_assistant.jsonl"),
                              max_steps=2, save_steps=100))
    state = manager.wait(300)
    assert state.status == "completed", state.message
    record = json.loads((tmp_path / "runs" / state.run_id / "run.json").read_text())
    assert record["summary"]["loss"] == "transformers" and math.isfinite(record["summary"]["final_loss"])
    assert calls == []


def test_the_loss_and_gradients_are_the_same_with_the_chunked_loss_on_or_off(tiny_llama, monkeypatch):
    """One fixed batch through the tiny Llama on the CPU: the switch unset, the model gets
    tuner.cross_entropy's loss; TUNER_CHUNKED_LOSS=0 (or false, no, off) leaves transformers'
    own. Both give the same loss and the same gradients, to fp32 rounding."""
    from transformers import AutoModelForCausalLM

    from tuner import cross_entropy

    gen = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, 2000, (2, 48), generator=gen)
    labels = input_ids.clone()
    labels[0, :12] = -100  # a prompt's tokens, not trained on
    labels[1, 40:] = -100

    def run(switch):
        monkeypatch.setenv("TUNER_CHUNKED_LOSS", switch)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        used = cross_entropy.use_for_training(model)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        return used, model.loss_function, loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    on, on_loss_function, on_loss, on_grads = run("")
    off, off_loss_function, off_loss, off_grads = run("0")
    assert on and on_loss_function is cross_entropy.causal_lm_loss
    assert not off and off_loss_function is not cross_entropy.causal_lm_loss
    assert torch.allclose(on_loss, off_loss, rtol=1e-6, atol=1e-6), (on_loss, off_loss)
    for name, grad in off_grads.items():
        assert torch.allclose(on_grads[name], grad, rtol=1e-4, atol=1e-6), name
    for switch, is_off in (("false", True), ("No", True), (" off ", True), ("1", False), ("on", False)):
        monkeypatch.setenv("TUNER_CHUNKED_LOSS", switch)
        assert cross_entropy.switched_off() is is_off, switch
