"""Attention for padding-free packed batches that costs what the examples cost.

A packed batch lays its examples end to end in one row. Plain SDPA then works on
the whole row: a dense (total × total) block-diagonal mask, so four 200-token
examples cost as much attention as one 800-token example, and the masked
kernel cannot skip the causal upper triangle. Here each example is attended
on its own, with `is_causal=True` and no mask (the fast kernel path), from the
example boundaries the collator passes as `cu_seq_lens_q` (the name
flash-attention's variable-length kernels use, so the same batches also suit
`flash_attention_2` on a GPU). Profiled on SmolLM2-135M (2 CPU cores, bf16):
attention's share of a training step's CPU time fell, and the whole step with it
(measured: see docs/performance.md), with the same loss (CPU flash attention has a high fixed cost per call, so
four short sequences cost less than one long one, but not four times less).

Each example's attention is then one of two kernels, whichever measured faster on
this machine for the model's shapes (`kernel`: one probe per process and shape,
most of its time the kernels' first-call set-up):
torch's SDPA (flash attention on a CPU) or `explicit_causal`, two matmuls and an
fp32 softmax per example, with grouped-query heads multiplied without copying the
key/value heads. CPU flash attention's backward is slow: on a 2-core Xeon with
AMX, SmolLM2-135M's shapes (9 heads, 3 key/value heads, 5 examples of ~200
tokens, bf16) ran forward + backward faster explicit than with SDPA (measured: see
docs/performance.md), the same values to bf16's rounding. On a GPU, SDPA's kernels are used.

It is registered without a mask function, so transformers builds no mask for it
(a total × total mask per forward cost a share of every step: docs/performance.md): it therefore only serves
packed rows with boundaries and refuses anything else (padded batches, generation)
rather than attend across padding; train() switches the model back to SDPA at the
end. Models whose attention is more than plain causal SDPA (sliding windows, logit
soft-capping, attention sinks, position biases) stay on SDPA:
`use_for_packed_training` says no.
"""

from __future__ import annotations

import functools
import os
import time

import torch

NAME = "tuner_packed_sdpa"
KERNELS = ("sdpa", "explicit")
# explicit attention keeps each example's (heads × L × L) softmax for the backward pass (6
# bytes an entry: fp32 and its bf16 copy), in every layer: longer examples go to SDPA, whose
# memory does not grow with L², and so does a whole row whose examples would keep more than
# EXPLICIT_BUDGET bytes a layer (SmolLM2's 4 rows of 256 tokens: ~11 MB; × 30 layers)
EXPLICIT_MAX_LEN = 512
EXPLICIT_BUDGET = 32 * 2 ** 20


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv

    bounds = kwargs.get("cu_seq_lens_q")
    special = [k for k in ("sliding_window", "softcap", "s_aux", "position_bias") if kwargs.get(k) is not None]
    if special:
        raise ValueError(f"attention {NAME!r} is plain causal attention; this model also needs "
                         f"{', '.join(special)}: keep it on 'sdpa'")
    if bounds is None or query.shape[0] != 1:
        raise ValueError(f"attention {NAME!r} serves packed rows with example boundaries (cu_seq_lens_q, "
                         "from PackCollator(boundaries=True)) only; for other batches switch the model "
                         "back with set_attn_implementation('sdpa')")
    edges = example_edges(bounds)
    lengths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    kept = query.shape[1] * sum(n * n for n in lengths if n <= EXPLICIT_MAX_LEN)
    explicit = not dropout and 6 * kept <= EXPLICIT_BUDGET and kernel(query, key) == "explicit"
    kernels_used.add("explicit" if explicit else "sdpa")
    if explicit and max(lengths, default=0) > EXPLICIT_MAX_LEN:
        kernels_used.add("sdpa")  # (explicit_causal hands those examples to SDPA)
    if explicit:
        out = explicit_causal(query, key, value, edges, scaling)
        return out.transpose(1, 2).contiguous(), None
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    parts = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout, scale=scaling, is_causal=True)
        for a, b in zip(edges[:-1], edges[1:]) if b > a]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


def explicit_causal(query, key, value, edges: list[int], scaling=None):
    """Causal attention of each example [edges[i], edges[i+1]) on its own, as two
    matmuls and an fp32 softmax: query (1, heads, T, d), key and value (1, kv_heads,
    T, d) with heads a multiple of kv_heads (grouped-query attention: query head
    h reads key/value head h // (heads / kv_heads), as transformers' repeat_kv lays
    them out). Returns (1, heads, T, d). Examples longer than EXPLICIT_MAX_LEN use SDPA."""
    _, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = dim ** -0.5 if scaling is None else scaling
    parts = []
    for a, b in zip(edges[:-1], edges[1:]):
        n = b - a
        if n <= 0:
            continue
        if n > EXPLICIT_MAX_LEN:
            from transformers.integrations.sdpa_attention import repeat_kv

            parts.append(torch.nn.functional.scaled_dot_product_attention(
                query[:, :, a:b], repeat_kv(key[:, :, a:b], groups), repeat_kv(value[:, :, a:b], groups),
                scale=scaling, is_causal=True))
            continue
        q = query[0, :, a:b].reshape(kv_heads, groups * n, dim)  # each key/value head's query rows together
        scores = torch.matmul(q, key[0, :, a:b].transpose(-1, -2)).view(kv_heads, groups, n, n)
        exact = scores.to(torch.promote_types(scores.dtype, torch.float32))
        weights = (exact * scale + _causal_mask(n, scores.device)).softmax(-1).to(value.dtype)
        out = torch.matmul(weights.view(kv_heads, groups * n, n), value[0, :, a:b])
        parts.append(out.view(1, heads, n, value.shape[-1]))  # (a value head may be wider or narrower)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


@functools.lru_cache(maxsize=64)
def _causal_mask(n: int, device) -> torch.Tensor:
    return torch.full((n, n), float("-inf"), device=device).triu(1)


def kernel(query, key) -> str:
    """'sdpa' or 'explicit' for these shapes: TUNER_PACKED_KERNEL when set to one of
    them (for benchmarks), SDPA on a GPU, else whichever `_probe` measured faster."""
    forced = os.environ.get("TUNER_PACKED_KERNEL", "auto")
    if forced in KERNELS:
        return forced
    if query.device.type != "cpu":
        return "sdpa"
    return _probe(query.shape[1], key.shape[1], query.shape[-1], query.dtype)


@functools.lru_cache(maxsize=16)
def _probe(heads: int, kv_heads: int, dim: int, dtype) -> str:
    """Forward + backward of both kernels on four 200-token examples of these shapes:
    one call each to warm up (a shape's first calls pay for allocations), then three
    interleaved rounds of three calls, best round; the faster one's name. (Single
    calls measured too noisily: they picked SDPA where a warm loop measured it clearly
    slower.)"""
    from transformers.integrations.sdpa_attention import repeat_kv

    edges = [0, 200, 400, 600, 800]
    groups = heads // kv_heads

    def sdpa(q, k, v):
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        return torch.cat([torch.nn.functional.scaled_dot_product_attention(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True) for a, b in zip(edges[:-1], edges[1:])], dim=2)

    def explicit(q, k, v):
        return explicit_causal(q, k, v, edges)

    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(1, n, edges[-1], dim, generator=generator).to(dtype).requires_grad_()
               for n in (heads, kv_heads, kv_heads)]
    grad = torch.randn(1, heads, edges[-1], dim, generator=generator).to(dtype)
    best = {}
    kernels = (("sdpa", sdpa), ("explicit", explicit))
    with torch.enable_grad(), torch.autocast("cpu", enabled=False):
        for _name, fn in kernels:
            fn(*tensors).backward(grad)
        for _ in range(3):
            for name, fn in kernels:
                start = time.perf_counter()
                for _ in range(3):
                    fn(*tensors).backward(grad)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    return min(best, key=best.get)


kernels_used: set[str] = set()  # the kernels of the forward passes since `use_for_packed_training`
_last_edges: tuple = (None, None)  # (the boundaries tensor, its values as a list)


def example_edges(bounds) -> list[int]:
    """The boundaries as Python ints, read once per forward pass: every decoder layer
    gets the same `cu_seq_lens_q` tensor, and on a GPU each read is a device-to-host
    copy that waits for all queued work (one sync per layer before; one per step now)."""
    global _last_edges
    if not isinstance(bounds, torch.Tensor):
        return list(bounds)
    seen, edges = _last_edges
    if seen is not bounds:  # (the tensor is held here, so its identity cannot be reused)
        edges = bounds.tolist()
        _last_edges = (bounds, edges)
    return edges


def register() -> str:
    """Make the implementation known to transformers (idempotent) and return its name.

    No mask function is registered with it: transformers then builds no mask."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_sdpa_forward)
    return NAME


def use_for_packed_training(model) -> bool:
    """Switch a model on SDPA to per-example attention; False (and unchanged) where
    its attention is something else (eager, flash-attention, a custom kernel)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    layer_types = getattr(config, "layer_types", None) or []
    if (getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping", None)
            or any(kind != "full_attention" for kind in layer_types)):
        return False  # attention beyond plain causal SDPA: keep transformers' own
    kernels_used.clear()
    try:
        base.set_attn_implementation(register())
    except (ValueError, AttributeError):  # an architecture that cannot switch at run time
        return False
    return base.config._attn_implementation == NAME


def restore_sdpa(model) -> None:
    """Back to transformers' SDPA (after training), so the model serves any batch again."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) == NAME:
        base.set_attn_implementation("sdpa")
