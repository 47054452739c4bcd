import pytest
import torch

from tuner.generate import BASE, GenSettings, Generator, balanced_batches
from tuner.config import TrainConfig
from tuner.runs import RunManager as Trainer
from helpers import chat, write_jsonl


def test_base_reply_comes_from_the_same_model_with_adapter_disabled(tiny_llama, trained_run, tmp_path):
    prompts = [[{"role": "user", "content": "Say hi 1"}], [{"role": "user", "content": "What is two plus two?"}]]
    settings = GenSettings(max_new_tokens=8, batch_size=2)
    plain = Generator(tmp_path)
    before = plain.generate(str(tiny_llama), prompts, settings)

    shared = Generator(tmp_path)
    # a run id with dots: peft adapter names may not contain them
    tuned = shared.generate(str(tiny_llama), prompts, settings, adapter=("run.v2-1", trained_run))
    model_after_adapter = shared.model
    base = shared.generate(str(tiny_llama), prompts, settings)
    assert shared.model is model_after_adapter  # no second copy was loaded
    assert [r.text for r in base] == [r.text for r in before]  # disable_adapter() == the plain model
    assert [r.text for r in tuned] != [r.text for r in base]
    assert tuned[0].variant == "run.v2-1" and base[0].variant == BASE
    assert all(r.new_tokens <= 8 and r.latency_s > 0 for r in tuned + base)
    assert tuned[0].settings["max_new_tokens"] == 8


def test_batched_and_single_generation_agree(tiny_llama, tmp_path):
    prompts = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "A longer question here?"}]]
    gen = Generator(tmp_path, precision="fp32")  # exact: bf16 may round a batch of 2 rows differently
    batched = gen.generate(str(tiny_llama), prompts, GenSettings(max_new_tokens=6, batch_size=2))
    single = gen.generate(str(tiny_llama), prompts, GenSettings(max_new_tokens=6, batch_size=1))
    assert [r.text for r in batched] == [r.text for r in single]


def test_batches_are_balanced_and_cover_every_prompt():
    assert [len(b) for b in balanced_batches(10, 8)] == [5, 5]  # not 8 + 2
    assert [len(b) for b in balanced_batches(10, 4)] == [3, 4, 3]
    assert [list(b) for b in balanced_batches(3, 10)] == [[0, 1, 2]]
    assert balanced_batches(0, 4) == []
    for n in range(1, 40):
        for size in (1, 3, 10, 16):
            batches = balanced_batches(n, size)
            assert [i for b in batches for i in b] == list(range(n))
            assert max(map(len, batches)) <= size and len(batches) == -(-n // size)


def test_loading_ahead_keeps_one_model(tiny_llama, trained_run, tmp_path):
    gen = Generator(tmp_path)
    gen.load(str(tiny_llama), [("run-1", trained_run)])
    loaded = gen.model
    prompts = [[{"role": "user", "content": "Hello"}]]
    gen.generate(str(tiny_llama), prompts, GenSettings(max_new_tokens=4), adapter=("run-1", trained_run))
    gen.generate(str(tiny_llama), prompts, GenSettings(max_new_tokens=4))
    assert gen.model is loaded


def test_settings_are_checked():
    with pytest.raises(ValueError, match="temperature"):
        GenSettings(temperature=5)


@pytest.mark.slow
def test_prompt_tuning_trains_and_generates_beside_a_lora_adapter(tiny_llama, trained_run, tmp_path):
    rows = [chat(f"Say hi {i}", "Hello there, friend!") for i in range(8)]
    dataset = write_jsonl(tmp_path / "d.jsonl", rows)
    manager = Trainer(tmp_path / "runs", tmp_path / "models")
    manager.start(TrainConfig(base_model=str(tiny_llama), dataset=str(dataset), method="prompt_tuning",
                              num_virtual_tokens=8, prompt_tuning_init_text="Answer kindly.",
                              learning_rate=3e-2, max_steps=12, test_fraction=0.0, validation_fraction=0.0))
    state = manager.wait(300)
    assert state.status == "completed", state.message
    losses = [r["loss"] for r in state.rows if "loss" in r]
    assert losses[-1] < losses[0]
    assert state.summary["trainable_params"] == 8 * 64  # virtual tokens × hidden size
    adapter = tmp_path / "runs" / state.run_id / "adapter"

    prompts = [[{"role": "user", "content": "Say hi 3"}]]
    settings = GenSettings(max_new_tokens=6)
    gen = Generator(tmp_path)
    base_before = gen.generate(str(tiny_llama), prompts, settings)
    lora = gen.generate(str(tiny_llama), prompts, settings, adapter=("lora-run", trained_run))
    prompted = gen.generate(str(tiny_llama), prompts, settings, adapter=("pt-run", adapter))
    base_after = gen.generate(str(tiny_llama), prompts, settings)
    assert base_after[0].text == base_before[0].text
    assert prompted[0].text != base_before[0].text and prompted[0].new_tokens <= 6
    assert lora[0].text != prompted[0].text


@pytest.mark.slow
def test_cli_generate_writes_base_and_tuned_replies(tiny_llama, trained_run, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('prompt\nSay hi 2\n"Hello, who are you?"\n')
    out = tmp_path / "replies.jsonl"
    env = dict(os.environ, TUNER_HOME=str(tmp_path / "home"), PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-m", "tuner", "generate", "--run", str(trained_run.parent), "--prompts",
                           str(prompts), "--out", str(out), "--max-new-tokens", "6"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["variant"]) for r in rows] == [
        ("Say hi 2", "base"), ("Hello, who are you?", "base"), ("Say hi 2", "tuned"), ("Hello, who are you?", "tuned")]
    assert all(r["settings"]["max_new_tokens"] == 6 and r["latency_s"] > 0 for r in rows)
    bad = tmp_path / "bad.csv"
    bad.write_text("question\nhi\n")
    done = subprocess.run([sys.executable, "-m", "tuner", "generate", "--run", str(trained_run.parent), "--prompts",
                           str(bad)], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "needs a 'prompt' column" in done.stderr


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_base_and_lora_rows_sharing_a_batch_give_each_variant_its_own_replies(tiny_llama, trained_run, tmp_path,
                                                                               precision):
    """generate_all mixes base and LoRA rows in one batch (peft's adapter_names): the
    replies are those of each variant generated on its own (exactly so in fp32)."""
    prompts = [[{"role": "user", "content": "Say hi 1"}], [{"role": "user", "content": "What is two plus two?"}]]
    adapter = ("run-1", trained_run)
    gen = Generator(tmp_path, precision=precision)
    mixed_base, mixed_tuned = gen.generate_all(str(tiny_llama), prompts, GenSettings(max_new_tokens=8, batch_size=4),
                                               [None, adapter])
    apart = GenSettings(max_new_tokens=8, batch_size=2)
    base = gen.generate(str(tiny_llama), prompts, apart)
    tuned = gen.generate(str(tiny_llama), prompts, apart, adapter=adapter)
    assert [r.text for r in mixed_tuned] != [r.text for r in mixed_base]
    if precision == "fp32":  # in bf16 a batch of 4 rows may round differently from one of 2
        assert [r.text for r in mixed_base] == [r.text for r in base]
        assert [r.text for r in mixed_tuned] == [r.text for r in tuned]
    assert {r.variant for r in mixed_base} == {BASE} and {r.variant for r in mixed_tuned} == {"run-1"}
    assert {r.settings["dtype"] for r in mixed_base + mixed_tuned} == {precision}
    base_weights = {p.dtype for n, p in gen.base.named_parameters() if "lora_" not in n}
    assert base_weights == {torch.float32 if precision == "fp32" else torch.bfloat16}


def test_a_lean_bf16_load_has_the_same_weights_as_from_pretrained(tiny_llama, monkeypatch):
    """models.load_as reads the checkpoint a tensor at a time (lower peak memory) and
    must give exactly what from_pretrained(dtype=bf16) gives, tied weights included."""
    from transformers import AutoModelForCausalLM

    from tuner import models

    def no_fallback(*_a, **_k):
        raise AssertionError("load_as fell back to from_pretrained")

    with monkeypatch.context() as patched:
        patched.setattr(models, "load", no_fallback)
        lean, tokenizer = models.load_as(models.ModelSource("tiny", str(tiny_llama), "local"), torch.bfloat16)
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16)
    lean_buffers, ref_buffers = dict(lean.named_buffers()), dict(reference.named_buffers())
    assert lean_buffers.keys() == ref_buffers.keys()
    for name, buffer in ref_buffers.items():  # the rotary frequencies are not in the checkpoint
        assert torch.equal(lean_buffers[name], buffer), name
    lean_state, ref_state = lean.state_dict(), reference.state_dict()
    assert lean_state.keys() == ref_state.keys()
    for name, tensor in ref_state.items():
        assert lean_state[name].dtype == torch.bfloat16 and torch.equal(lean_state[name], tensor), name
    assert (lean.lm_head.weight.data_ptr() == lean.model.embed_tokens.weight.data_ptr()) == \
        (reference.lm_head.weight.data_ptr() == reference.model.embed_tokens.weight.data_ptr())
    assert tokenizer.pad_token is not None and not lean.training


def test_progress_moves_token_by_token_within_one_batch(tiny_llama, trained_run, tmp_path):
    """Progress moves within one batch (5 prompts × 2 variants in one batch once showed 0% until
    the very end)."""
    prompts = [[{"role": "user", "content": f"Say hi {i}"}] for i in range(5)]
    seen = []
    gen = Generator(tmp_path)
    replies = gen.generate_all(str(tiny_llama), prompts, GenSettings(max_new_tokens=8, batch_size=32),
                               [None, ("run-1", trained_run)], progress=lambda done, total: seen.append((done, total)))
    assert [len(r) for r in replies] == [5, 5]
    assert len(seen) > 2 and all(total == 10 for _d, total in seen)
    assert 0 < seen[0][0] < 10  # a first step reported before the batch ends
    assert [d for d, _t in seen] == sorted(d for d, _t in seen) and seen[-1][0] == 10


def test_a_streamed_reply_grows_word_by_word_to_the_generated_reply(tiny_llama, trained_run, tmp_path):
    conversation = [{"role": "user", "content": "Tell me about the sea."}]
    settings = GenSettings(max_new_tokens=24)
    gen = Generator(tmp_path)
    for adapter in (None, ("run-1", trained_run)):
        whole = gen.generate(str(tiny_llama), [conversation], settings, adapter=adapter)[0].text
        partial = list(gen.stream(str(tiny_llama), conversation, settings, adapter=adapter))
        assert len(partial) >= 3, partial  # several updates, not the reply at once
        assert all(a != b and b.startswith(a) for a, b in zip(partial, partial[1:])), partial
        assert partial[-1] == whole

    # a reader that stops early lets the generation end and the model go to the next caller
    stream = gen.stream(str(tiny_llama), conversation, settings)
    first = next(stream)
    stream.close()
    assert first and gen.generate(str(tiny_llama), [conversation], settings)[0].text.startswith(first)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 50, 0.95), (0.7, 50, 1.0), (1.3, 0, 0.9), (1.0, 5, 0.5)])
def test_the_top_k_sampler_draws_from_transformers_sampling_distribution(temperature, top_k, top_p):
    """The draw among the top-k candidates against transformers' own warpers (temperature, top-k,
    top-p) and softmax: the same tokens can come out, in the same proportions."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from tuner.generate import _top_sample

    torch.manual_seed(0)
    scores = torch.randn(1, 400) * 3
    reference = scores.clone()
    for warper in [TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else []) + \
            [TopPLogitsWarper(top_p)]:
        reference = warper(None, reference)
    expected = reference.softmax(-1)[0]
    rows = 20000
    out = _top_sample(temperature, top_k, top_p)[0](None, scores.expand(rows, -1).contiguous())
    assert torch.isfinite(out).sum(-1).eq(1).all()  # one token left per row: the greedy pick takes it
    drawn = torch.bincount(out.argmax(-1), minlength=400).float() / rows
    assert set(drawn.nonzero().flatten().tolist()) <= set(expected.nonzero().flatten().tolist())
    assert 0.5 * (drawn - expected).abs().sum() < 0.03  # total variation; a wrong temperature gives ~0.1+


def test_sampled_replies_are_reproducible_by_seed_and_drawn_among_the_top_k(tiny_llama, tmp_path):
    """Generation's sampled replies: the same seed gives the same replies, another seed others, and
    every first token is one of the model's 50 most likely (transformers' default top-k)."""
    from transformers import AutoModelForCausalLM

    from tuner.chat import encode_prompt

    prompts = [[{"role": "user", "content": f"Tell me something {i}"}] for i in range(4)] * 8
    gen = Generator(tmp_path, precision="fp32")
    # no repetition penalty: the check below compares with the model's own top 50
    settings = GenSettings(max_new_tokens=3, temperature=1.0, top_p=0.95, repetition_penalty=1.0, batch_size=32,
                           seed=3)
    first = gen.generate(str(tiny_llama), prompts, settings)
    again = gen.generate(str(tiny_llama), prompts, settings)
    other = gen.generate(str(tiny_llama), prompts, GenSettings(**{**settings.__dict__, "seed": 4}))
    assert [r.text for r in first] == [r.text for r in again]
    assert [r.text for r in first] != [r.text for r in other]
    one = gen.generate(str(tiny_llama), prompts, GenSettings(**{**settings.__dict__, "max_new_tokens": 1}))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    outside = 0
    for prompt, reply in zip(prompts, one):
        with torch.no_grad():
            logits = model(torch.tensor([encode_prompt(prompt, gen.tokenizer)])).logits[0, -1]
        top = {gen.tokenizer.decode([t], skip_special_tokens=True).strip() for t in logits.topk(50).indices.tolist()}
        outside += reply.text not in top
    assert outside == 0


def test_stop_when_ends_each_row_once_its_reply_decides_it(tiny_llama, trained_run, tmp_path):
    """A row ends once stop_when(reply so far) is true: its reply is a prefix of the reply without
    it, and a batch whose every row has stopped ends before max_new_tokens; rows that never meet
    it are unchanged. Base and LoRA rows of one batch alike."""
    from tuner.generate import STOP_EVERY

    prompts = [[{"role": "user", "content": f"Write about topic {i}"}] for i in range(6)]
    gen = Generator(tmp_path, precision="fp32")
    settings = GenSettings(max_new_tokens=40, batch_size=12)
    adapters = [None, ("run", trained_run)]
    full = gen.generate_all(str(tiny_llama), prompts, settings, adapters)
    words = 3
    cut = gen.generate_all(str(tiny_llama), prompts, settings, adapters,
                           stop_when=lambda text: len(text.split()) >= words)
    stopped = 0
    for whole, short in zip(sum(full, []), sum(cut, [])):
        assert whole.text.startswith(short.text)
        if short.new_tokens < whole.new_tokens:
            stopped += 1
            assert len(short.text.split()) >= words and short.new_tokens % STOP_EVERY == 0
        else:
            assert short.text == whole.text
    assert stopped > 0
    never = gen.generate_all(str(tiny_llama), prompts, settings, adapters, stop_when=lambda text: False)
    assert [[r.text for r in v] for v in never] == [[r.text for r in v] for v in full]


def test_a_model_asking_for_other_warpers_keeps_transformers_own_sampling():
    """The top-k sampler stands in for temperature, top-k and top-p only: a generation config
    that sets min_p, typical_p or a cut-off is sampled by transformers itself."""
    from transformers import GenerationConfig

    from tuner.generate import _only_top_k_and_p

    assert _only_top_k_and_p(GenerationConfig())
    assert _only_top_k_and_p(GenerationConfig(top_k=20, top_p=0.9, temperature=0.7))
    for other in ({"min_p": 0.05}, {"typical_p": 0.9}, {"epsilon_cutoff": 3e-4}, {"eta_cutoff": 3e-4}):
        assert not _only_top_k_and_p(GenerationConfig(**other)), other


def test_the_sampler_keeps_the_tokens_tied_with_the_k_th_score():
    """bf16 logits often tie at the k-th score (SmolLM2: most decoding steps); transformers'
    top-k keeps every tied token, and so does the sampler: the same support and, tokens of equal
    score pooled, the same probabilities."""
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    from tuner.generate import candidates

    torch.manual_seed(1)
    scores = (torch.randn(3, 2000) * 2).to(torch.bfloat16).float()  # coarse values: many ties
    scores[1, :300] = scores[1].topk(50).values[-1]  # ties running past the extra candidates looked at
    for top_p in (1.0, 0.95):
        probs, indices = candidates(scores, 1.0, 50, top_p)
        reference = TopPLogitsWarper(top_p)(None, TopKLogitsWarper(50)(None, scores.clone())).softmax(-1)
        for row in range(3):
            mine = torch.zeros(2000).index_add_(0, indices[row], probs[row] / probs[row].sum())
            assert int((mine > 0).sum()) == int((reference[row] > 0).sum())
            pooled = {}
            for token in range(2000):
                key = float(scores[row, token])
                pooled[key] = pooled.get(key, 0.0) + float(mine[token]) - float(reference[row, token])
            assert max(abs(v) for v in pooled.values()) < 1e-5


def test_rows_that_have_ended_leave_the_batch_and_the_others_write_on_unchanged(tiny_llama, trained_run, tmp_path,
                                                                               monkeypatch):
    """Once a quarter of a batch's rows have ended, decoding goes on without them (from the
    others' own KV cache): later decoding steps run fewer rows, and every reply is the one the
    whole batch wrote (fp32: exact), base and LoRA rows of one batch alike."""
    import tuner.generate as generate

    prompts = [[{"role": "user", "content": f"Write about topic {i}"}] for i in range(6)]
    gen = Generator(tmp_path, precision="fp32")
    settings = GenSettings(max_new_tokens=40, batch_size=12)
    adapters = [None, ("run", trained_run)]
    # rows end at different lengths: each once its reply has a number of words of its own
    words = {}

    def ended(text):
        return len(text.split()) >= words.setdefault(text.split()[0] if text else "", 2 + len(words) % 5)

    rows_seen = []
    gen.generate_all(str(tiny_llama), prompts[:1], GenSettings(max_new_tokens=2), [None])  # loaded
    hook = gen.base.register_forward_pre_hook(lambda _m, args, kwargs: rows_seen.append(
        (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[0]), with_kwargs=True)
    compact = gen.generate_all(str(tiny_llama), prompts, settings, adapters, stop_when=ended)
    hook.remove()
    monkeypatch.setattr(generate, "COMPACT_AT", 2.0)  # never: the whole batch to the end
    whole = gen.generate_all(str(tiny_llama), prompts, settings, adapters, stop_when=ended)
    assert rows_seen[0] == 12 and min(rows_seen) < 12 and rows_seen == sorted(rows_seen, reverse=True)
    assert [[r.text for r in v] for v in compact] == [[r.text for r in v] for v in whole]
    assert [[r.new_tokens for r in v] for v in compact] == [[r.new_tokens for r in v] for v in whole]
    assert len({r.new_tokens for r in sum(whole, [])}) > 1


def test_rows_ending_on_an_end_token_at_any_step_leave_the_batch_with_the_replies_of_plain_generate(
        tiny_llama, tmp_path, monkeypatch):
    """Rows that end on the model's end token, each at its own step, leave the batch; the
    replies are those of transformers' generate over the whole batch (fp32: exact)."""
    import tuner.generate as generate

    prompts = [[{"role": "user", "content": f"Tell me about thing number {i}"}] for i in range(8)]
    gen = Generator(tmp_path, precision="fp32")
    settings = GenSettings(max_new_tokens=30, batch_size=8)
    monkeypatch.setattr(generate, "COMPACT_AT", 2.0)  # plain generate: the whole batch to the end
    gen.generate(str(tiny_llama), prompts[:1], GenSettings(max_new_tokens=2))  # loaded
    # the random model's most frequent token ends a row wherever it first appears
    from tuner.chat import encode_prompt

    enc = gen.tokenizer.pad({"input_ids": [encode_prompt(p, gen.tokenizer) for p in prompts]}, return_tensors="pt")
    with torch.inference_mode():
        out = gen.base.generate(**enc, max_new_tokens=30, do_sample=False, repetition_penalty=1.1,
                                pad_token_id=gen.tokenizer.pad_token_id)
    first_at: dict[int, set] = {}  # each token: the steps at which it first appears in a row
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        for step, token in enumerate(row):
            if step and token not in row[:step]:
                first_at.setdefault(token, set()).add(step)
    gen.base.generation_config.eos_token_id = max(first_at, key=lambda t: len(first_at[t]))
    plain = gen.generate(str(tiny_llama), prompts, settings)
    monkeypatch.setattr(generate, "COMPACT_AT", 0.25)
    rows_seen = []
    hook = gen.base.register_forward_pre_hook(lambda _m, args, kwargs: rows_seen.append(
        (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[0]), with_kwargs=True)
    compact = gen.generate(str(tiny_llama), prompts, settings)
    hook.remove()
    lengths = [r.new_tokens for r in plain]
    assert len(set(lengths)) > 2 and min(lengths) < 30  # rows end at different steps
    assert rows_seen[0] == 8 and min(rows_seen) < 8
    assert [r.text for r in compact] == [r.text for r in plain]
    assert [r.new_tokens for r in compact] == lengths
    # a model whose generation config asks for another cache (Gemma's "hybrid" is a static one)
    # keeps transformers' generate: a static cache cannot drop rows
    assert generate._droppable_cache(gen.base) is not None
    gen.base.generation_config.cache_implementation = "static"
    assert generate._droppable_cache(gen.base) is None
