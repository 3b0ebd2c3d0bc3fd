"""Encode items and find the key's token position through the tokenizer's character offsets."""

from __future__ import annotations

from dataclasses import dataclass

from kisstore.data.items import Item
from kisstore.errors import InputError

POSITIONS = ("subject_last", "subject_first", "last")


@dataclass(frozen=True)
class EncodedItem:
    input_ids: list[int]
    key_pos: int  # token index whose MLP input is the key
    target_pos: list[int]  # token indices of target_true's tokens (teacher forced)


def encode_item(tokenizer, item: Item, position: str = "subject_last") -> EncodedItem:
    """Tokenise ``prompt + " " + target_true`` once; locate subject, prompt end and target.

    Works for subjects at the start or in the middle, multi-token subjects and tokenizers
    that attach the leading space to the token (offsets overlap the subject's characters).
    """
    if position not in POSITIONS:
        raise InputError(f"unknown --token {position!r}: use one of {', '.join(POSITIONS)}")
    prompt = item.text
    s0 = item.prompt.index("{}")
    s1 = s0 + len(item.subject)
    full = f"{prompt} {item.target_true}"
    enc = tokenizer(full, return_offsets_mapping=True, add_special_tokens=True, return_special_tokens_mask=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    special = enc.get("special_tokens_mask") or [0] * len(ids)
    subject = [j for j, (a, b) in enumerate(offsets) if a < b and a < s1 and b > s0]
    in_prompt = [j for j, (a, b) in enumerate(offsets) if a < b and a < len(prompt)]
    # the target is every non-special token after the prompt's last one: a tokenizer that trims
    # offsets gives a token of only a space an empty span, and it is still the target's first token
    after = in_prompt[-1] + 1 if in_prompt else len(ids)
    target = [j for j in range(after, len(ids)) if not special[j]]
    if not subject:
        raise InputError(f"case_id {item.case_id}: subject {item.subject!r} not found among the prompt's tokens")
    if not in_prompt or not target:
        raise InputError(f"case_id {item.case_id}: cannot separate prompt and target tokens")
    straddles = any(a < len(prompt) < b for a, b in offsets)
    key_pos = {"subject_last": subject[-1], "subject_first": subject[0], "last": in_prompt[-1]}[position]
    # a token spanning the prompt/target boundary would make teacher forcing ill-defined
    return EncodedItem(list(ids), key_pos, [] if straddles else target)
