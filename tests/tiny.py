"""Tiny, randomly initialised models of every registry architecture, saved as real model dirs.

They go through the same loading path as a downloaded model (config.json, safetensors,
fast tokenizer), so tests exercise the real code with no network.
"""

from __future__ import annotations

import json
from pathlib import Path

TEXT = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Danielle Darrieux speaks French. Toko Yasuda plays the guitar.",
    "The mother tongue of Thomas Joannes Stieltjes is Dutch.",
    "Python is a programming language. Apple A5 was created by Apple.",
    "Berlin, London, Madrid, Tokyo, Vienna, Lisbon are cities in the world.",
]

ARCHS = ("gpt2", "gptj", "gpt_neox", "llama")


def tokenizer_files(directory: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT * 20, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.save_pretrained(directory)


def config_for(arch: str, vocab: int = 300):
    from transformers import GPT2Config, GPTJConfig, GPTNeoXConfig, LlamaConfig

    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=256, n_embd=32, n_layer=3, n_head=4, n_inner=48)
    if arch == "gptj":
        return GPTJConfig(vocab_size=vocab, n_positions=256, n_embd=32, n_layer=3, n_head=4, n_inner=40,
                          rotary_dim=4)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                             intermediate_size=44, max_position_embeddings=256)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=36, max_position_embeddings=256)
    raise ValueError(arch)


def make_model(directory: Path, arch: str, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_files(directory)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config_for(arch))
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def items_file(path: Path, n: int = 12) -> Path:
    subjects = ["France", "Italy", "Danielle Darrieux", "Toko Yasuda", "Thomas Joannes Stieltjes", "Python",
                "Apple A5", "Berlin", "London", "Madrid", "Tokyo", "Vienna", "Lisbon", "Rome"]
    prompts = ["The capital of {} is", "{} speaks the language", "In {}, people speak"]
    records = []
    for i in range(n):
        s = subjects[i % len(subjects)]
        records.append({
            "case_id": 100 + i,
            "requested_rewrite": {
                "prompt": prompts[i % len(prompts)], "subject": s, "relation_id": f"P{i % 3}",
                "target_true": {"str": "Paris", "id": None}, "target_new": {"str": "Rome", "id": None},
            },
        })
    path.write_text(json.dumps(records))
    return path


def corpus_file(path: Path, n_docs: int = 40) -> Path:
    docs = []
    for i in range(n_docs):
        docs.append(" ".join(TEXT[(i + j) % len(TEXT)] for j in range(1 + i % 4)))
    path.write_text("\n\n".join(docs))
    return path
