"""A Python API for quick experiments: extract into a store, keys in memory, an edit run's table.

Everything here is a thin layer over the code the command line runs (``kisstore.extract``'s
pipeline, its hooks and key positions, ``kisstore.edit.report``); nothing is computed a
second way. Imports are deferred to the calls, so ``import kisstore`` stays free of torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kisstore.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import xarray as xr

# The defaults of `kisstore extract` where they differ from ExtractOptions' own.
_CLI_DEFAULTS = {"layers": "all", "progress": True}


def extract(models: str | Sequence[str], store: str, **options: Any) -> list[str]:
    """Run ``kisstore extract``: the same pipeline, defaults, store layout and resumption.

    ``models`` is one model (alias, Hub id, local directory, .gguf) or several; ``options`` are
    the command's options with ``_`` for ``-`` (``items``, ``n_items``, ``known_only``,
    ``corpus``, ``corpus_tokens``, ``max_length``, ``batch_tokens``, ``layers``, ``token``,
    ``device``, ``dtype``, ``overwrite``, ``storage_options`` …; ``max_memory`` in bytes;
    ``progress=False`` for ``--quiet``). Calling it again after an interruption resumes, and on
    a complete store does nothing. Returns the model ids written."""
    from kisstore.extract.pipeline import ExtractOptions, run_extract

    if isinstance(models, str):
        models = [models]
    elif not isinstance(models, Sequence) or not all(isinstance(m, str) for m in models):
        raise InputError("models: give a model name or a list of model names")
    fields = {f.name for f in dataclasses.fields(ExtractOptions)} - {"models", "store"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InputError(f"kisstore.extract: unknown option {unknown[0]!r} (options: {', '.join(sorted(fields))})")
    if not isinstance(store, str) or not store:
        raise InputError("store: give the store's path or URL")
    opts = ExtractOptions(models=list(models), store=store, **{**_CLI_DEFAULTS, **options})
    return run_extract(opts)


def load_model(model: str, *, device: str = "auto", dtype: str = "auto", **kw: Any):
    """Load a model as ``extract`` does (alias, Hub id, directory, .gguf), to reuse across ``keys`` calls."""
    from kisstore.models.loading import load_model as _load

    return _load(model, device=device, dtype=dtype, **kw)


def keys(model: Any, prompts: Sequence[str], subjects: Sequence[str], *, targets: Sequence[str] | None = None,
         layers: str | Sequence[int] | None = None, position: str = "subject_last", batch_tokens: int = 2048,
         device: str = "auto", dtype: str = "auto") -> xr.DataArray:
    """The keys (inputs of the MLP down-projection) of each prompt's subject token, in memory.

    ``prompts[i]`` is a CounterFact template with ``{}`` for the subject, or the text itself
    with ``subjects[i]`` in it. ``model`` is a name (loaded here) or what :func:`load_model`
    returned. ``position`` is ``extract``'s ``--token`` (``subject_last``, ``subject_first``,
    ``last``). Returns a DataArray ``(layer, item, d_ff)``; with ``targets`` (each fact's
    true object) it is exactly the item pass ``extract`` stores, over ``prompt + " " + target``,
    and carries ``known`` and ``p_true`` too; without, only the prompts run.
    """
    import numpy as np
    import xarray as xr

    from kisstore.extract.positions import POSITIONS
    from kisstore.layers import parse_layers

    items = _items(prompts, subjects, targets)
    if position not in POSITIONS:
        raise InputError(f"unknown position {position!r}: use one of {', '.join(POSITIONS)}")
    if not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise InputError(f"batch_tokens must be a positive whole number, got {batch_tokens!r}")
    lm = load_model(model, device=device, dtype=dtype) if isinstance(model, str) else model
    if not hasattr(lm, "key_site") or not hasattr(lm, "tokenizer"):
        raise InputError("model: give a model name or what kisstore.load_model returned")
    if layers is None or isinstance(layers, str):
        chosen = parse_layers(layers, lm.n_layers)
    else:
        chosen = parse_layers(",".join(str(int(x)) for x in layers), lm.n_layers)

    coords: dict[str, Any] = {"layer": np.asarray(chosen, dtype=np.int64),
                              "item": np.arange(len(items), dtype=np.int64),
                              "prompt": ("item", [it.text for it in items]),
                              "subject": ("item", [it.subject for it in items])}
    if targets is not None:
        from kisstore.extract.keys import item_pass

        r = item_pass(lm, items, chosen, position=position, batch_tokens=min(batch_tokens, 2048), progress=False)
        values = r.keys
        coords["target_true"] = ("item", [it.target_true for it in items])
        coords["known"] = ("item", r.known)
        coords["p_true"] = ("item", r.p_true)
    else:
        values = _prompt_keys(lm, items, chosen, position, batch_tokens)
    return xr.DataArray(values, dims=("layer", "item", "d_ff"), coords=coords, name="key", attrs={
        "long_name": f"MLP key (input of {lm.key_site.template}) at the {position} token",
        "model": lm.source.name, "hooked_module": lm.key_site.template, "token_position": position})


def _items(prompts, subjects, targets):
    from kisstore.data.items import Item

    if isinstance(prompts, str) or isinstance(subjects, str):
        raise InputError("prompts and subjects: give lists of strings (one per fact), not a single string")
    prompts, subjects = list(prompts), list(subjects)
    if not prompts:
        raise InputError("prompts: give at least one prompt")
    if len(subjects) != len(prompts):
        raise InputError(f"{len(prompts)} prompts but {len(subjects)} subjects: give one subject per prompt")
    if targets is not None:
        if isinstance(targets, str):
            raise InputError("targets: give a list of strings (one per fact), not a single string")
        targets = list(targets)
        if len(targets) != len(prompts):
            raise InputError(f"{len(prompts)} prompts but {len(targets)} targets: give one target per prompt")
    out = []
    for i, (p, s) in enumerate(zip(prompts, subjects, strict=True)):
        if not isinstance(p, str) or not isinstance(s, str) or not s.strip():
            raise InputError(f"item {i}: prompt and subject must be non-empty strings")
        if "{}" not in p:
            if s not in p:
                raise InputError(f"item {i}: subject {s!r} is not in the prompt {p[:80]!r} (or use '{{}}' for it)")
            p = p.replace(s, "{}", 1)
        t = targets[i] if targets is not None else ""
        if targets is not None and (not isinstance(t, str) or not t.strip()):
            raise InputError(f"item {i}: target must be a non-empty string")
        out.append(Item(case_id=i, prompt=p, subject=s, relation_id="", target_true=t, target_new=""))
    return out


def _prompt_keys(lm, items, layers, position, batch_tokens):
    """The keys of prompts alone: the item pass's hooks and batching, with no target appended."""
    import numpy as np
    import torch

    from kisstore.extract.batching import pad_right, token_budget_batches
    from kisstore.extract.hooks import StopForward, key_hooks

    enc = [_encode_prompt(lm.tokenizer, it, position) for it in items]
    out = np.zeros((len(layers), len(items), lm.d_ff), dtype=np.float32)
    row = {layer: r for r, layer in enumerate(layers)}
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(items)), key=lambda i: len(enc[i][0]))
    for chunk in token_budget_batches([len(enc[i][0]) for i in order], batch_tokens):
        group = [order[j] for j in chunk]
        ids, mask = pad_right([enc[i][0] for i in group], pad)
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        pos = torch.tensor([enc[i][1] for i in group], device=lm.device)
        rows = torch.arange(len(group), device=lm.device)

        def on_key(layer, x, _g=group, _p=pos, _r=rows, _shape=ids.shape):
            x = x.reshape(*_shape, -1)
            out[row[layer], _g] = x[_r, _p].float().cpu().numpy()

        with torch.inference_mode(), key_hooks(lm.model, lm.key_site, layers, on_key, stop_after_last=True):
            try:
                lm.model(input_ids=ids, attention_mask=mask)
            except StopForward:
                pass
    return out


def _encode_prompt(tokenizer, item, position: str) -> tuple[list[int], int]:
    """Token ids of the prompt and the key's position, located as ``encode_item`` locates it."""
    text = item.text
    s0 = item.prompt.index("{}")
    s1 = s0 + len(item.subject)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    subject = [j for j, (a, b) in enumerate(offsets) if a < b and a < s1 and b > s0]
    in_prompt = [j for j, (a, b) in enumerate(offsets) if a < b]
    if not subject:
        raise InputError(f"item {item.case_id}: subject {item.subject!r} not found among the prompt's tokens")
    return ids, {"subject_last": subject[-1], "subject_first": subject[0], "last": in_prompt[-1]}[position]


def forgetting_table(store: Any, run: str | None = None, *, every: int = 1,
                     storage_options: dict | None = None) -> pd.DataFrame:
    """An edit run's forgetting curve as a DataFrame indexed by step.

    ``store`` is a store path/URL (``run`` names ``/edits/<run>``; the store's only run if
    omitted) or an edit run's ``xarray.Dataset``. Columns as ``kisstore edit`` prints them:
    ``p_true``, ``top1`` (tracked facts), ``efficacy``, ``retention``, ``interference``,
    ``alphaedit_interference``, ``relative_error``; rows at steps 0, every, 2·every, … and the last.
    """
    import pandas as pd
    import xarray as xr

    from kisstore.edit import report

    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise InputError(f"every must be a positive whole number, got {every!r}")
    ds = store if isinstance(store, xr.Dataset) else _edit_run(store, run, storage_options)
    return pd.DataFrame(report.forgetting_table(ds, every=every)).set_index("step")


def _edit_run(store: str, run: str | None, storage_options: dict | None):
    from kisstore.store.io import open_store
    from kisstore.store.urls import redact

    tree = open_store(store, storage_options)
    runs = sorted(tree["edits"].children) if "edits" in tree.children else []
    if run is None:
        if len(runs) != 1:
            raise InputError(f"the store holds {len(runs)} edit runs ({', '.join(runs) or 'none'}); pass run=")
        run = runs[0]
    if run not in runs:
        raise InputError(f"no edit run {run!r} in {redact(store)} (runs: {', '.join(runs) or 'none'})")
    return tree[f"edits/{run}"].to_dataset().load()
