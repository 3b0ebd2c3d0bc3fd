"""``kisstore edit``: sequential closed-form edits of one layer, with the interference they cause.

The run has two sides that never share intermediate results:

* the **model** side applies each edit ``W ← W + Λ (C⁻¹k*)ᵀ`` to the real down-projection
  weight (a float64 master copy is kept and written into the model after every edit), and
  measures ``W_n k − W_0 k`` and the model's behaviour;
* the **theory** side predicts the same changes from the stored keys, C and each edit's
  intended change alone (P values times residuals, the paper's eqs. 10–15).

Everything is written at the end as one group ``/edits/<run>`` (dims ``step, item``); a
failed or interrupted run leaves the store as it was.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from kisstore import failpoints
from kisstore._version import __version__
from kisstore.data.items import Item
from kisstore.edit import closed_form as cf
from kisstore.edit.spread import SPREAD_METHODS
from kisstore.edit.targets import RomeOptions
from kisstore.errors import InputError, StoreError
from kisstore.store import commit, layout
from kisstore.store.io import Store
from kisstore.store.urls import public_options, redact

EDITS = "edits"
METHODS = ("rome", "direct", "memit", "alphaedit")
TARGETS = ("rome", "direct")
DEFAULT_TRACKED = 64
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class EditOptions:
    """Everything ``kisstore edit`` takes; recorded as the run's attributes."""

    store: str
    model: str
    layer: int | None  # rome/direct: the edited layer; memit/alphaedit: a one-layer range unless --layers
    edits: int
    tracked: int | None = None  # held-out known facts to follow (default: min(64, available))
    tracked_from: str = "known"  # "known": facts the model knows (the paper's choice); "all": any other fact
    method: str = "rome"
    seed: int = 0
    run: str | None = None
    nullspace_threshold: float = 2e-2  # AlphaEdit's: eigenvalues of C below it span the null space
    nullspace_relative: bool = False  # threshold relative to C's largest eigenvalue instead
    alphaedit_l2: float = 10.0  # AlphaEdit's L2 (its GPT-2 XL, GPT-J and Llama-3 default)
    ridge: float = 0.0
    direct_scale: float = 1.0
    rome: RomeOptions = field(default_factory=RomeOptions)
    vectors: bool = True  # store the (step, item, d_model) change vectors, not only their norms
    overwrite: bool = False
    device: str = "auto"
    batch_tokens: int = 2048
    threads: int | None = None  # torch intra-op threads (1 is fastest on a CPU shared with other jobs)
    eval_every: int = 1  # CounterFact's evaluation every N steps (0: none); kisstore.edit.metrics
    collapse_threshold: float = 0.5  # forecast: the share of tracked facts still known that counts as collapse
    items: str | None = None  # items file with the CounterFact prompts [default: the store's, when embedded]
    layers: str | None = None  # memit/alphaedit: the layer range (a layer SPEC); default: --layer alone
    batch: int = 1  # memit/alphaedit: facts per step
    target: str = "rome"  # memit/alphaedit: how v* (z) is chosen: rome's optimisation or direct
    mom2_update_weight: float = 15000.0  # memit: MEMIT's λ on the store's C = E[kkᵀ] (its GPT-J value)
    checkpoint_every: int = 10  # steps between checkpoints in the store (every method)
    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EditPlan:
    """What a run will do, decided from the store alone (no model loaded)."""

    model_id: str
    attrs: dict[str, Any]
    layer: int
    run: str
    items: list[Item]  # the edited facts in edit order, then the tracked facts
    n_edits: int
    keys: np.ndarray  # (item, d_ff) float64, the stored keys at the layer, same order as items
    cov: np.ndarray  # (d_ff, d_ff) float64
    n_tokens: int
    done: bool = False  # the store already holds this very run, complete (the same command again)
    layers: list[int] = field(default_factory=list)  # memit/alphaedit: the range, ascending (last = z layer)
    layer_keys: np.ndarray | None = None  # (layer, item, d_ff) stored keys per layer of the range
    layer_covs: np.ndarray | None = None  # (layer, d_ff, d_ff)

    @property
    def case_ids(self) -> np.ndarray:
        return np.array([it.case_id for it in self.items], dtype=np.int64)


def edit_path(run: str) -> str:
    return f"{EDITS}/{run}"


def validate(opts: EditOptions) -> None:
    """Option checks that need neither the store nor the model."""
    if opts.method not in METHODS:
        raise InputError(f"unknown --method {opts.method!r}: use {', '.join(METHODS)}")
    if opts.target not in TARGETS:
        raise InputError(f"unknown --target {opts.target!r}: use rome or direct")
    spread = opts.method in SPREAD_METHODS
    if not spread and opts.layers is not None:
        raise InputError(f"--layers is for --method memit or alphaedit; --method {opts.method} edits one --layer")
    if not spread and opts.batch != 1:
        raise InputError(f"--batch is for --method memit or alphaedit; --method {opts.method} edits one fact a step")
    if spread and opts.layer is None and opts.layers is None:
        raise InputError(f"--method {opts.method} needs --layers (e.g. 3-8) or --layer")
    if not spread and opts.layer is None:
        raise InputError(f"--method {opts.method} needs --layer")
    if opts.batch < 1:
        raise InputError(f"--batch must be at least 1, got {opts.batch}")
    if opts.checkpoint_every < 1:
        raise InputError(f"--checkpoint-every must be at least 1, got {opts.checkpoint_every}")
    if not (opts.mom2_update_weight > 0 and np.isfinite(opts.mom2_update_weight)):
        raise InputError(f"--mom2-update-weight must be a finite, positive number, got {opts.mom2_update_weight}")
    if opts.edits < 1:
        raise InputError(f"--edits must be at least 1, got {opts.edits}")
    if opts.tracked is not None and opts.tracked < 0:
        raise InputError(f"--tracked must not be negative, got {opts.tracked}")
    if opts.tracked_from not in ("known", "all"):
        raise InputError(f"unknown --tracked-from {opts.tracked_from!r}: use known or all")
    if not opts.nullspace_threshold > 0.0:
        raise InputError(f"--nullspace-threshold must be positive, got {opts.nullspace_threshold}")
    if opts.nullspace_relative and not opts.nullspace_threshold < 1.0:
        raise InputError(f"--nullspace-threshold with --nullspace-relative must lie in (0, 1), "
                         f"got {opts.nullspace_threshold}")
    if not opts.ridge >= 0.0:
        raise InputError(f"--ridge must be non-negative, got {opts.ridge}")
    if opts.run is not None and (not _RUN_NAME.match(opts.run) or ".." in opts.run):
        raise InputError(f"invalid --run name {opts.run!r} (letters, digits, '.', '_', '-')")
    from kisstore.limits import check_threads

    check_threads(opts.threads)
    if opts.eval_every < 0:
        raise InputError(f"--eval-every must be 0 (no evaluation) or a positive number of steps, got {opts.eval_every}")
    if not 0.0 < opts.collapse_threshold < 1.0:
        raise InputError(f"--collapse-threshold must lie in (0, 1) (a share of the tracked facts still known), "
                         f"got {opts.collapse_threshold}")
    if opts.rome.steps < 2:
        raise InputError(f"--rome-steps must be at least 2 (N evaluations of the loss make at most N − 1 Adam "
                         f"updates, as ROME's v_num_grad_steps), got {opts.rome.steps}")
    if not 0 < opts.rome.lr < float("inf"):
        raise InputError("--rome-lr must be positive (and finite)")
    if opts.seed < 0:
        raise InputError(f"--seed must not be negative, got {opts.seed}")
    for flag, value, low in (("--direct-scale", opts.direct_scale, "positive"), ("--kl-factor", opts.rome.kl_factor,
                             "non-negative"), ("--weight-decay", opts.rome.weight_decay, "non-negative"),
                             ("--ridge", opts.ridge, "non-negative"),
                             ("--nullspace-threshold", opts.nullspace_threshold, "positive"),
                             ("--alphaedit-l2", opts.alphaedit_l2, "positive")):
        ok = value > 0 if low == "positive" else value >= 0
        if not (ok and np.isfinite(value)):
            raise InputError(f"{flag} must be a finite, {low} number, got {value}")


def _load_model_dataset(store: Store, model_id: str) -> xr.Dataset:
    return layout.current_names(  # a schema-1 store's `keys` read as `key`
        store.open_dataset(layout.model_path(model_id)))


def plan_edit(opts: EditOptions) -> EditPlan:
    """Check the request against the store and choose the facts (seeded); no model is loaded."""
    from kisstore.extract.pipeline import store_items

    validate(opts)
    store = Store(opts.store, opts.storage_options, read_only=True)
    if not store.exists():
        raise StoreError(f"no store at {redact(opts.store, opts.storage_options)}")
    store.validate()
    model_id = layout.sanitize_model_id(opts.model)
    present = store.model_ids(complete_only=False)
    if model_id not in present:
        have = ", ".join(present) or "none"
        raise StoreError(f"the store has no model {model_id!r} (models: {have}); run kisstore extract first")
    attrs = store.group_attrs(layout.model_path(model_id))
    if attrs.get("complete") is not True:
        raise StoreError(f"model {model_id!r} in the store is incomplete; finish kisstore extract first")
    ds = _load_model_dataset(store, model_id)
    if "cov" not in ds or layout.KEY not in ds:
        raise StoreError(f"model {model_id!r} has no keys/covariance in the store")
    n_layers = int(attrs.get("n_layers") or int(ds["layer"].max()) + 1)
    if opts.method in SPREAD_METHODS:
        from kisstore.layers import parse_layers

        spec = opts.layers if opts.layers is not None else str(opts.layer)
        layer_range = parse_layers(spec, n_layers)
    else:
        if not -n_layers <= opts.layer < n_layers:
            raise InputError(f"--layer {opts.layer} is out of range: {model_id} has {n_layers} layers "
                             f"(0–{n_layers - 1})")
        layer_range = [opts.layer + n_layers if opts.layer < 0 else opts.layer]
    layer = layer_range[-1]
    have_layers = ds["layer"].values.tolist()
    for lay in layer_range:
        if lay not in have_layers:
            raise StoreError(f"the store has no covariance for layer {lay} of {model_id} (extracted layers: "
                             f"{_ranges(have_layers)}); extract it with kisstore extract --layers {lay}")
        if "n_tokens" in ds and int(ds["n_tokens"].sel(layer=lay).values) <= 0:
            raise StoreError(f"the covariance of layer {lay} of {model_id} holds no corpus tokens")
    n_tokens = int(ds["n_tokens"].sel(layer=layer).values) if "n_tokens" in ds else 0
    if n_tokens <= 0:
        raise StoreError(f"the covariance of layer {layer} of {model_id} holds no corpus tokens")
    items = store_items(store)
    if items is None:
        raise StoreError("the store has no /items group")
    n = len(items)
    if opts.edits > n:
        raise InputError(f"--edits {opts.edits} is more than the {n} items in the store")
    rng = np.random.default_rng(opts.seed)
    # edited facts have distinct subjects, and no tracked fact shares a subject with an edited
    # one: facts about one subject share their key (P = 1 when both prompts start with the
    # subject), so they are not the "unrelated" facts the forgetting curve follows
    subject = [_subject_key(it) for it in items]
    edited_list: list[int] = []
    seen: set[str] = set()
    for i in rng.permutation(n):
        if subject[i] not in seen:
            seen.add(subject[i])
            edited_list.append(int(i))
            if len(edited_list) == opts.edits:
                break
    if len(edited_list) < opts.edits:
        raise InputError(f"--edits {opts.edits}: the store's {n} items have only {len(seen)} distinct subjects "
                         "(each edit takes a fact about a subject not edited before)")
    edited = np.array(edited_list, dtype=int)
    known = np.asarray(ds["known"].values, dtype=bool) if "known" in ds else np.ones(n, dtype=bool)
    if opts.tracked_from == "all":
        known = np.ones(n, dtype=bool)
    unrelated = np.array([s not in seen for s in subject], dtype=bool)
    pool = np.flatnonzero(known & unrelated)
    n_tracked = min(DEFAULT_TRACKED, len(pool)) if opts.tracked is None else opts.tracked
    if n_tracked > len(pool):
        what = "known facts" if opts.tracked_from == "known" else "facts"
        raise InputError(f"--tracked {n_tracked} is more than the {len(pool)} {what} left after "
                         f"{opts.edits} edits (facts about an edited subject are not tracked)")
    tracked = np.sort(rng.choice(pool, size=n_tracked, replace=False))
    sel = np.concatenate([edited, tracked]).astype(int)
    if opts.method in SPREAD_METHODS:
        span = f"{layer_range[0]}-{layer_range[-1]}" if len(layer_range) > 1 else str(layer)
        run = opts.run or f"{model_id}-{opts.method}-layers{span}-e{opts.edits}-b{opts.batch}-seed{opts.seed}"
    else:
        run = opts.run or f"{model_id}-{opts.method}-layer{layer}-e{opts.edits}-seed{opts.seed}"
    done = False
    handle = Store(opts.store, opts.storage_options, read_only=True)
    if handle.has(edit_path(run)) and not opts.overwrite:
        stored = handle.group_attrs(edit_path(run))
        done = stored.get("complete") is True and _same_run(stored, opts, model_id, layer, layer_range)
        if not done:
            raise InputError(f"run {run!r} already exists in the store with other settings (or unfinished); "
                             "pass --overwrite or another --run")
    keys = np.asarray(ds[layout.KEY].sel(layer=layer).values[sel], dtype=np.float64)
    cov = np.asarray(ds["cov"].sel(layer=layer).values, dtype=np.float64)
    plan = EditPlan(model_id, attrs, layer, run, [items[i] for i in sel], opts.edits, keys, cov, n_tokens, done,
                    layers=layer_range)
    if opts.method in SPREAD_METHODS and not done:
        plan.layer_keys = np.stack([np.asarray(ds[layout.KEY].sel(layer=lay).values[sel], dtype=np.float64)
                                    for lay in layer_range])
        plan.layer_covs = np.stack([np.asarray(ds["cov"].sel(layer=lay).values, dtype=np.float64)
                                    for lay in layer_range])
    return plan


def _same_run(stored: dict[str, Any], opts: EditOptions, model_id: str, layer: int,
              layer_range: list[int] | None = None) -> bool:
    """Whether a stored run was made with these settings (those that change its arrays)."""
    return all(stored.get(k) == v for k, v in run_settings(opts, model_id, layer, layer_range).items())


def run_settings(opts: EditOptions, model_id: str, layer: int, layer_range: list[int] | None = None) -> dict[str, Any]:
    """The settings that change a run's arrays, as its attributes record them (JSON values)."""
    want = {"model_id": model_id, "layer": layer, "edits": opts.edits, "tracked_from": opts.tracked_from,
            "method": opts.method, "seed": opts.seed, "nullspace_threshold": opts.nullspace_threshold,
            "alphaedit_l2": opts.alphaedit_l2, "nullspace_rule": "relative" if opts.nullspace_relative else "absolute",
            "ridge": opts.ridge, "direct_scale": opts.direct_scale, "vectors": opts.vectors,
            "rome": json.loads(json.dumps({**asdict(opts.rome), "prefixes": list(opts.rome.prefixes)})),
            "eval_every": opts.eval_every, "collapse_threshold": opts.collapse_threshold}
    if opts.tracked is not None:
        want["tracked"] = opts.tracked
    if opts.method in SPREAD_METHODS:  # absent from rome/direct runs (and from 0.1 stores)
        want.update({"layers": list(layer_range or [layer]), "batch": opts.batch, "target": opts.target,
                     "mom2_update_weight": opts.mom2_update_weight})
    return want


def _subject_key(item: Item) -> str:
    return " ".join(item.subject.split()).casefold()


def _ranges(values: list[int]) -> str:
    values = sorted(values)
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}–{values[-1]}"
    return ", ".join(map(str, values))


def _load_name(opts: EditOptions, plan: EditPlan) -> str:
    """What to load: the name the user typed unless it is only the store's group name."""
    from kisstore.models.aliases import ALIASES

    if opts.model != plan.model_id or opts.model in ALIASES:
        return opts.model
    return str(plan.attrs.get("model_name") or opts.model)


def load_for_plan(opts: EditOptions, plan: EditPlan):
    """Load the model and check that it is the one whose keys and C the store holds."""
    from kisstore.models.loading import load_model

    if opts.threads is not None:
        import torch

        torch.set_num_threads(opts.threads)
    lm = load_model(_load_name(opts, plan), device=opts.device, dtype="float32",
                    module=plan.attrs.get("hooked_module"))
    want = plan.attrs.get("model_revision")
    got = lm.provenance.get("model_revision")
    if want and got and "unknown" not in (want, got) and want != got:
        raise InputError(f"model {opts.model!r} loads revision {got}, but the store's keys and C come from {want}")
    if int(plan.attrs.get("d_ff", lm.d_ff)) != lm.d_ff or plan.keys.shape[1] != lm.d_ff:
        raise InputError(f"model {opts.model!r} has d_ff {lm.d_ff}, the store's keys have {plan.keys.shape[1]}")
    if int(plan.attrs.get("n_layers", lm.n_layers)) != lm.n_layers:
        raise InputError(f"model {opts.model!r} has {lm.n_layers} layers, the store's {plan.model_id} has "
                         f"{plan.attrs.get('n_layers')}: not the model its keys and C come from")
    return lm


def same_model_tolerance(attrs: dict[str, Any]) -> float:
    """How far the loaded float32 model's ``W k`` may be from ``W · (stored keys)`` for the same
    model: float32 rounding for a float32 extraction; a bfloat16/float16 one differs by its
    precision through every layer below."""
    return 1e-3 if attrs.get("dtype") in (None, "float32") else 0.1


def check_same_model(plan: EditPlan, stored_values: np.ndarray, live_values: np.ndarray) -> float:
    """Refuse a model whose outputs at the facts' keys do not match the store's keys.

    ``stored_values`` is ``W₀ · (stored keys)``, ``live_values`` the loaded model's own
    down-projection outputs at the same facts: equal up to rounding when the model is the one
    the store was extracted from, unrelated otherwise (a folder that only shares the name)."""
    drift = float(cf.relative_error(stored_values, live_values))
    tol = same_model_tolerance(plan.attrs)
    if not drift <= tol:
        raise InputError(
            f"the loaded model is not the one {plan.model_id!r}'s keys and C come from: its layer-{plan.layer} "
            f"outputs at the facts' keys differ from W·(stored keys) by {drift:.2g} (relative; the same model "
            f"gives at most {tol:g}); pass the model the store was extracted from "
            f"({plan.attrs.get('model_name') or plan.model_id})")
    return drift


def run_edit(opts: EditOptions, progress: Callable[[str], None] | None = None) -> tuple[str, xr.Dataset]:
    """Plan, edit, measure and write ``/edits/<run>``; returns (run name, dataset).

    The same command again, once the run is complete in the store, does nothing and returns
    the stored run (so a run killed at any write is completed by running it again)."""
    commit.recover(Store(opts.store, opts.storage_options))  # a commit a kill interrupted, first
    plan = plan_edit(opts)
    say = progress or (lambda _msg: None)
    prompts = None
    if opts.eval_every and not plan.done:  # a bad --items fails before the model loads
        from kisstore.edit.metrics import resolve_prompts

        store_ro = Store(opts.store, opts.storage_options, read_only=True)
        prompts = resolve_prompts(opts.items, store_ro.group_attrs(layout.ITEMS), plan.items[: plan.n_edits])
    if plan.done:
        from kisstore.edit.checkpoint import discard_checkpoints

        discard_checkpoints(Store(opts.store, opts.storage_options), plan.run)  # a kill after the commit
        say(f"[{plan.model_id}] /{edit_path(plan.run)} is already complete in the store with these settings; "
            "nothing to do (pass --overwrite to redo it)")
        stored = Store(opts.store, opts.storage_options, read_only=True)
        return plan.run, stored.open_dataset(edit_path(plan.run)).load()
    spread = opts.method in SPREAD_METHODS
    where = f"layers {_ranges(plan.layers)}, batches of {opts.batch}" if spread else f"layer {plan.layer}"
    say(f"[{plan.model_id}] {where}: {plan.n_edits} {opts.method} edits, "
        f"{len(plan.items) - plan.n_edits} tracked facts → /{edit_path(plan.run)}")
    t0 = time.perf_counter()
    lm = load_for_plan(opts, plan)
    say(f"[{plan.model_id}] loaded {lm.provenance.get('model_name')} on {lm.device} "
        f"({time.perf_counter() - t0:.1f} s)")
    store = Store(opts.store, opts.storage_options)
    path = edit_path(plan.run)
    from kisstore.edit.checkpoint import discard_checkpoints

    settings = run_settings(opts, plan.model_id, plan.layer, plan.layers)
    if opts.overwrite:
        discard_checkpoints(store, plan.run)
    if spread:
        from kisstore.edit.spread import spread_edits

        ds = spread_edits(lm, plan, opts, say, store, settings, prompts=prompts)
        chunks = None
    else:
        ds = sequential_edits(lm, plan, opts, say, prompts=prompts, store=store, settings=settings)
        chunks = {v: (1, *ds[v].shape[1:]) for v in ("predicted_change", "measured_change") if v in ds}
    ds.attrs.update(run_attrs(opts, plan, lm, time.perf_counter() - t0))
    # staged in full, then moved into place in one commit: an earlier run of the same name is
    # replaced whole, and a kill leaves either the old run or the new one
    store.write_dataset(commit.staged(path), ds, chunks=chunks)
    store.set_attrs(commit.staged(path), {"complete": True})
    # the staged run's parent (/_staging/edits) goes in the same commit once it is empty
    commit.commit(store, [commit.move(commit.staged(path), path),
                          commit.delete_if_empty(commit.staged(EDITS))])
    discard_checkpoints(store, plan.run)  # after the commit: a kill before it resumes from them
    return plan.run, ds


# the per-step rows a rome/direct checkpoint holds only since the checkpoint before it (chained)
_HISTORY = ("measured", "measured_alpha", "live")


def sequential_edits(lm, plan: EditPlan, opts: EditOptions, say: Callable[[str], None], prompts=None,
                     store: Store | None = None, settings: dict[str, Any] | None = None) -> xr.Dataset:
    """Apply the plan's edits one after another to the live model; measure and predict each step.

    With ``store``, the state is checkpointed every ``opts.checkpoint_every`` steps (chained,
    kisstore.edit.checkpoint) and a killed run resumes from its newest checkpoint."""
    import torch

    from kisstore.analysis.geometry import regularize, whitening
    from kisstore.edit.checkpoint import (
        checkpoint_chain,
        evaluator_arrays,
        load_evaluator,
        write_checkpoint,
    )
    from kisstore.edit.evaluate import FactProbe
    from kisstore.edit.targets import direct_delta, rome_delta
    from kisstore.edit.weights import down_proj_weight, set_down_proj_weight

    module = lm.key_site.find(lm.model, plan.layer)
    keys, n_e, n = plan.keys, plan.n_edits, len(plan.items)
    lower, _ = whitening(plan.cov, opts.ridge, layer=plan.layer, n_tokens=plan.n_tokens)
    projector, null_rank = cf.nullspace_projector(regularize(plan.cov, opts.ridge), opts.nullspace_threshold,
                                                  relative=opts.nullspace_relative)
    if null_rank == 0:
        say(f"warning: no eigenvalue of C at layer {plan.layer} is below the null-space threshold "
            f"{opts.nullspace_threshold:g}{' × λ_max' if opts.nullspace_relative else ''}: the AlphaEdit variant "
            "has nothing to project onto and its results are NaN (raise --nullspace-threshold)")
    coeff = cf.coefficients(keys[:n_e], keys, lower)  # theory side: whitened keys only

    w0 = down_proj_weight(module)
    d_model = w0.shape[0]
    w, w_alpha = w0.copy(), w0.copy()
    base = keys @ w0.T  # (item, d_model)
    steps = n_e + 1
    measured = np.zeros((steps, n, d_model))
    measured_alpha = np.zeros((steps, n, d_model))
    residual = np.zeros((n_e, d_model))
    residual_alpha = np.zeros((n_e, d_model))
    coeff_alpha = np.full((steps, n), np.nan)
    lam_norm = np.full(steps, np.nan)
    update_norm = np.full(steps, np.nan)
    update_norm_alpha = np.full(steps, np.nan)
    hit_alpha = np.full(steps, np.nan)
    alpha_seq = cf.AlphaEditSequence(projector, opts.alphaedit_l2)
    key_gram = np.full(steps, np.nan)
    opt_steps = np.zeros(steps, dtype=np.int64)
    opt_nll = np.full(steps, np.nan)
    opt_nll_start = np.full(steps, np.nan)
    seconds = np.zeros(steps)
    p_true = np.full((steps, n), np.nan)
    p_new = np.full((steps, n), np.nan)
    top1 = np.zeros((steps, n), dtype=bool)  # False where not scored; p_true is NaN there

    position = plan.attrs.get("token_position") or "subject_last"
    probe = FactProbe(lm, plan.items, batch_tokens=opts.batch_tokens, position=position)
    tracked = slice(n_e, n)
    original = module.weight.detach().clone()
    tracked_rows = list(range(n_e, n))

    def score(step: int) -> None:
        # tracked facts on target_true; the facts edited so far and the next one on both targets
        upto = list(range(min(step + 1, n_e)))
        s = probe.score(tracked_rows + upto, new_for=upto)
        p_true[step], p_new[step], top1[step] = s.p_true, s.p_new, s.top1

    live = np.zeros((steps, n, d_model))  # W_n k − W_0 k as the live model computes it
    counterfact = None
    if opts.eval_every:
        from kisstore.edit.evaluate import CounterFactEvaluator
        from kisstore.edit.metrics import PromptSource, eval_steps

        counterfact = CounterFactEvaluator(lm, plan.items[:n_e], prompts or PromptSource(),
                                           eval_steps(n_e, opts.eval_every), batch_tokens=opts.batch_tokens)
    history = {"measured": measured, "measured_alpha": measured_alpha, "live": live}
    full = {"residual": residual, "residual_alpha": residual_alpha, "coeff_alpha": coeff_alpha, "lam_norm": lam_norm,
            "update_norm": update_norm, "update_norm_alpha": update_norm_alpha, "hit_alpha": hit_alpha,
            "key_gram": key_gram, "opt_steps": opt_steps, "opt_nll": opt_nll, "opt_nll_start": opt_nll_start,
            "seconds": seconds, "p_true": p_true, "p_new": p_new, "top1": top1}  # filled in place
    last_checkpoint = 0

    def state_arrays(step: int) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        out = {f"state_{k}": (tuple(f"{k}_{a}" for a in range(v.ndim)), v) for k, v in full.items()}
        out["state_w"] = (("d_model", "d_ff"), w)
        out["state_w_alpha"] = (("d_model", "d_ff"), w_alpha)
        for k, v in alpha_seq.state().items():
            out[f"state_alpha_{k}"] = (("alpha_edit", "d_ff"), v)
        for k in _HISTORY:  # only the rows since the checkpoint before
            out[f"rows_{k}"] = (("row", "item", "d_model"), history[k][last_checkpoint + 1: step + 1])
        out.update(evaluator_arrays(counterfact))
        return out

    try:
        live_base = probe.outputs(module)
        check_same_model(plan, base, live_base)
        chain = [] if store is None or opts.overwrite else checkpoint_chain(store, plan.run, settings or {})
        if chain:
            newest = chain[-1]
            for ds in chain:
                first, last = int(ds.attrs["first_step"]), int(ds.attrs["step"])
                for k in _HISTORY:
                    history[k][first: last + 1] = ds[f"rows_{k}"].values
            for k, v in full.items():
                v[...] = newest[f"state_{k}"].values
            w = np.array(newest["state_w"].values, dtype=np.float64)
            w_alpha = np.array(newest["state_w_alpha"].values, dtype=np.float64)
            alpha_seq.load_state({k: newest[f"state_alpha_{k}"].values for k in ("keys", "projected")})
            load_evaluator(counterfact, newest)
            last_checkpoint = int(newest.attrs["step"])
            set_down_proj_weight(module, w)
            say(f"[{plan.model_id}] resuming /edits/{plan.run} after step {last_checkpoint}/{n_e} "
                "from its checkpoint")
        else:
            score(0)
            if counterfact is not None:
                counterfact.evaluate(0)
        for j in range(last_checkpoint + 1, steps):
            t = time.perf_counter()
            item, k = plan.items[j - 1], keys[j - 1]
            current = w @ k
            if opts.method == "rome":
                target = rome_delta(lm, module, item, current, opts.rome, position=position)
            else:
                target = direct_delta(lm, item, current, opts.direct_scale)
            value = current + target.delta
            edit = cf.rank_one_edit(w, k, value, lower)
            w = edit.apply(w)
            set_down_proj_weight(module, w)
            alpha = alpha_seq.edit(w_alpha, k, value)  # the same v*, from its own weight trajectory
            w_alpha = alpha.apply(w_alpha)
            hit_alpha[j] = float(alpha.direction @ k)  # AlphaEdit's ΔW k* = (uᵀk*) r: it lands only partly

            residual[j - 1], residual_alpha[j - 1] = edit.residual, alpha.lam * hit_alpha[j]
            lam_norm[j] = np.linalg.norm(edit.lam)
            update_norm[j] = np.linalg.norm(edit.lam) * np.linalg.norm(edit.direction)
            update_norm_alpha[j] = np.linalg.norm(alpha.lam) * np.linalg.norm(alpha.direction)
            key_gram[j] = float(edit.direction @ k)
            with np.errstate(divide="ignore", invalid="ignore"):
                coeff_alpha[j] = (keys @ alpha.direction) / hit_alpha[j]
            measured[j] = keys @ w.T - base
            measured_alpha[j] = keys @ w_alpha.T - base
            live[j] = probe.outputs(module) - live_base
            opt_steps[j], opt_nll[j], opt_nll_start[j] = target.steps, target.nll, target.nll_start

            score(j)
            seconds[j] = time.perf_counter() - t
            if counterfact is not None and counterfact.due(j):
                counterfact.evaluate(j)  # CounterFact's metrics (not counted in the step's seconds)
            say(f"[step {j}/{n_e}] case {item.case_id} {item.subject!r} → {item.target_new!r}: "
                f"p_new {p_new[j - 1, j - 1]:.3g} → {p_new[j, j - 1]:.3g} (p_true {p_true[j, j - 1]:.3g}); "
                f"tracked p_true {np.nanmean(p_true[j, tracked]):.3g}, top-1 {np.mean(top1[j, tracked]):.0%} "
                f"({seconds[j]:.1f} s)")
            if store is not None and j % opts.checkpoint_every == 0 and j < steps - 1:
                write_checkpoint(store, plan.run, j, state_arrays(j), settings or {}, first_step=last_checkpoint + 1)
                last_checkpoint = j
            failpoints.hit("edit-step")  # crash-safety tests: a SIGKILL between two steps
    finally:
        with torch.no_grad():
            module.weight.copy_(original)  # the caller's model is left as it was loaded

    predicted = np.concatenate([np.zeros((1, n, d_model)), cf.predicted_changes(residual, coeff)])
    coeff_a = np.nan_to_num(coeff_alpha[1:], nan=0.0)
    predicted_alpha = np.concatenate([np.zeros((1, n, d_model)), cf.predicted_changes(residual_alpha, coeff_a)])
    ds = build_dataset(
        plan=plan, predicted=predicted, measured=measured, coeff=coeff,
        predicted_alpha=predicted_alpha, measured_alpha=measured_alpha, live=live,
        coeff_alpha=coeff_alpha, lam_norm=lam_norm, update_norm=update_norm, update_norm_alpha=update_norm_alpha,
        hit_alpha=hit_alpha, residual=residual,
        key_gram=key_gram, opt_steps=opt_steps, opt_nll=opt_nll, opt_nll_start=opt_nll_start, seconds=seconds,
        p_true=p_true, p_new=p_new, top1=top1, null_rank=null_rank, vectors=opts.vectors,
    )
    return add_evaluation(ds, counterfact, _norm(base), opts.collapse_threshold)


def add_evaluation(ds: xr.Dataset, counterfact, value_norm: np.ndarray, collapse_threshold: float) -> xr.Dataset:
    """CounterFact's metrics (when evaluated) and the forgetting forecast, added to the run's arrays."""
    from kisstore.edit.forecast import add_forecast

    dims = ("layer", "item") if np.ndim(value_norm) == 2 else ("item",)
    ds["value_norm"] = (dims, value_norm, {"long_name": "|W_0 k|: the fact's unedited MLP value at the layer"})
    if counterfact is not None:
        extra = counterfact.dataset()
        attrs = {**ds.attrs, **extra.attrs}
        ds = ds.merge(extra)
        ds.attrs = attrs
    return add_forecast(ds, collapse_threshold)


def _since_edit(change: np.ndarray, n_e: int) -> np.ndarray:
    """Interference: an edited fact's drift from v* since its own edit; a tracked fact's whole change.

    Before its edit, an edited fact's key is disturbed like any other; from its step e on,
    the edit has set its value to v*, and only what later edits add counts.
    """
    out = change.copy()
    for i in range(n_e):
        out[i + 1 :, i] -= change[i + 1, i]
    return out


def _norm(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(x * x, axis=-1))


def build_dataset(*, plan: EditPlan, predicted, measured, coeff, predicted_alpha, measured_alpha, live,
                  coeff_alpha, lam_norm, update_norm, update_norm_alpha, hit_alpha, residual, key_gram, opt_steps,
                  opt_nll, opt_nll_start, seconds,
                  p_true, p_new, top1, null_rank: int, vectors: bool) -> xr.Dataset:
    """Lay the run's arrays out on (step, item[, d_model]) with the facts' text as coordinates."""
    n_e, n = plan.n_edits, len(plan.items)
    steps = np.arange(n_e + 1)
    edit_step = np.array([i + 1 if i < n_e else -1 for i in range(n)], dtype=np.int64)
    edited_item = np.concatenate([[-1], plan.case_ids[:n_e]]).astype(np.int64)
    coefficient = np.concatenate([np.full((1, n), np.nan), coeff])
    rows = np.arange(n_e)
    efficacy = np.concatenate([[np.nan], p_new[rows + 1, rows]])
    efficacy_before = np.concatenate([[np.nan], p_new[rows, rows]])
    success = np.concatenate([[False], p_new[rows + 1, rows] > p_true[rows + 1, rows]])
    sv = ("step", "item")
    data = {
        "edited_item": ("step", edited_item),
        "coefficient": (sv, coefficient),
        "predicted_norm": (sv, _norm(predicted)),
        "measured_norm": (sv, _norm(measured)),
        "relative_error": (sv, cf.relative_error(predicted, measured, axis=-1)),
        "interference_predicted": (sv, _norm(_since_edit(predicted, n_e))),
        "interference_measured": (sv, _norm(_since_edit(measured, n_e))),
        "live_norm": (sv, _norm(live)),
        "live_relative_error": (sv, cf.relative_error(predicted, live, axis=-1)),
        "step_change_norm": (sv, np.concatenate([np.zeros((1, n)), _norm(np.diff(measured, axis=0))])),
        "residual_norm": ("step", np.concatenate([[np.nan], _norm(residual)])),
        "lambda_norm": ("step", lam_norm),
        "update_norm": ("step", update_norm),
        "key_gram": ("step", key_gram),
        "alphaedit_coefficient": (sv, coeff_alpha),
        "alphaedit_interference_predicted": (sv, _norm(_since_edit(predicted_alpha, n_e))),
        "alphaedit_interference_measured": (sv, _norm(_since_edit(measured_alpha, n_e))),
        "alphaedit_relative_error": (sv, cf.relative_error(predicted_alpha, measured_alpha, axis=-1)),
        "alphaedit_update_norm": ("step", update_norm_alpha),
        "alphaedit_hit": ("step", hit_alpha),
        "p_true": (sv, p_true),
        "p_new": (sv, p_new),
        "top1": (sv, top1),
        "efficacy": ("step", efficacy),
        "efficacy_before": ("step", efficacy_before),
        "efficacy_success": ("step", success),
        "optimisation_steps": ("step", opt_steps),
        "optimisation_nll": ("step", opt_nll),
        "optimisation_nll_start": ("step", opt_nll_start),
        "seconds": ("step", seconds),
    }
    if vectors:
        data["predicted_change"] = (("step", "item", "d_model"), predicted)
        data["measured_change"] = (("step", "item", "d_model"), measured)
    coords = {"step": steps, **item_coords(plan, edit_step)}
    ds = xr.Dataset(data, coords=coords)
    per_step = cf.relative_error(predicted[1:], measured[1:], axis=(1, 2))
    per_step_alpha = cf.relative_error(predicted_alpha[1:], measured_alpha[1:], axis=(1, 2))
    per_step_live = cf.relative_error(predicted[1:], live[1:], axis=(1, 2))
    ds["step_relative_error"] = ("step", np.concatenate([[0.0], per_step]))
    ds["step_live_relative_error"] = ("step", np.concatenate([[0.0], per_step_live]))
    ds.attrs.update({
        "max_relative_error": float(np.max(per_step)),
        "max_live_relative_error": float(np.max(per_step_live)),
        "alphaedit_max_relative_error": float(np.nanmax(per_step_alpha)) if np.isfinite(per_step_alpha).any()
        else float("nan"),
        "nullspace_rank": int(null_rank),
    })
    return ds


def item_coords(plan: EditPlan, edit_step: np.ndarray) -> dict[str, Any]:
    """The run's ``item`` coordinate with each fact's role (edited/tracked), edit step and text."""
    n_e = plan.n_edits
    return {
        "item": plan.case_ids,
        "role": ("item", np.array(["edited" if i < n_e else "tracked" for i in range(len(plan.items))], dtype=object)),
        "edit_step": ("item", edit_step),
        **{field: ("item", np.array([getattr(it, field) for it in plan.items], dtype=object))
           for field in ("subject", "prompt", "target_true", "target_new")},
    }


def run_attrs(opts: EditOptions, plan: EditPlan, lm, elapsed: float) -> dict[str, Any]:
    """Every setting of the run, with the provenance needed to redo it."""
    import torch
    import transformers

    return {
        "kind": "sequential closed-form edits",
        "model_id": plan.model_id, "model_name": lm.provenance.get("model_name"),
        "model_revision": lm.provenance.get("model_revision"), "hooked_module": lm.key_site.template,
        "layer": plan.layer, "n_layers": lm.n_layers, "d_ff": lm.d_ff, "edits": plan.n_edits,
        "tracked": len(plan.items) - plan.n_edits, "tracked_from": opts.tracked_from,
        "selection": "edited facts have distinct subjects; tracked facts share no subject with an edited one",
        "method": opts.method, "seed": opts.seed, "run": plan.run,
        "nullspace_threshold": opts.nullspace_threshold, "alphaedit_l2": opts.alphaedit_l2,
        "nullspace_rule": "relative" if opts.nullspace_relative else "absolute", "ridge": opts.ridge,
        "direct_scale": opts.direct_scale,
        **({"layers": plan.layers, "batch": opts.batch, "target": opts.target,
            "mom2_update_weight": opts.mom2_update_weight, "checkpoint_every": opts.checkpoint_every,
            "residual_split": "1/(layers left), MEMIT's", "z_layer": plan.layers[-1]}
           if opts.method in SPREAD_METHODS else {}),
        "rome": {**asdict(opts.rome), "prefixes": list(opts.rome.prefixes)}, "vectors": opts.vectors,
        "token_position": plan.attrs.get("token_position"), "corpus": plan.attrs.get("corpus"),
        "n_tokens": plan.n_tokens, "device": lm.device, "dtype": lm.dtype, "threads": opts.threads,
        "storage_options": public_options(opts.storage_options), "seconds": round(elapsed, 2),
        "eval_every": opts.eval_every, "collapse_threshold": opts.collapse_threshold,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"kisstore": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "complete": False,
    }
