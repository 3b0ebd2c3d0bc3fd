"""The corpus pass's grouped-query attention: key/value heads repeated in float32, same result."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import kisstore.extract.attention as attention
from kisstore.extract.attention import dense_kv_attention


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Every call of torch's SDPA: (query heads, key heads, enable_gqa)."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((q.shape[1], k.shape[1], kwargs.get("enable_gqa", False)))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


def _body(model, ids):
    with torch.inference_mode():
        return model.model(input_ids=ids, use_cache=False).last_hidden_state


def test_float32_gqa_repeats_kv_heads_inside_and_gives_the_same_states(tiny_models, sdpa_calls):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], attn_implementation="sdpa").eval()
    heads, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    assert kv < heads  # the tiny Llama has grouped-query attention
    ids = torch.randint(0, 300, (3, 21), generator=torch.Generator().manual_seed(1))
    outside = _body(model, ids)
    assert set(sdpa_calls) == {(heads, kv, True)}  # transformers' own choice without a mask
    sdpa_calls.clear()
    with dense_kv_attention():
        inside = _body(model, ids)
    assert set(sdpa_calls) == {(heads, heads, False)}
    torch.testing.assert_close(inside, outside, rtol=1e-6, atol=1e-6)
    sdpa_calls.clear()
    _body(model, ids)  # and back to transformers' choice after
    assert set(sdpa_calls) == {(heads, kv, True)}


def test_half_precision_keeps_transformers_choice(tiny_models, sdpa_calls):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], attn_implementation="sdpa",
                                                 dtype=torch.bfloat16).eval()
    with dense_kv_attention():
        _body(model, torch.randint(0, 300, (2, 9)))
    assert {gqa for _, _, gqa in sdpa_calls} == {True}


def test_an_error_inside_leaves_the_switch_off(tiny_models, sdpa_calls):
    with pytest.raises(RuntimeError), dense_kv_attention():
        raise RuntimeError("a failing batch")
    assert attention._passes == 0 and attention._on is False
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], attn_implementation="sdpa").eval()
    _body(model, torch.randint(0, 300, (2, 9)))
    assert {gqa for _, _, gqa in sdpa_calls} == {True}
