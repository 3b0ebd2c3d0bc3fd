"""Train a family of Llama-architecture LMs of several widths on one zoo world, resumably.

Every width sees the same documents in the same order: the order is a pure function of
(seed, step), so a resumed run needs no data state. A width's run checkpoints its weights,
optimizer state, RNG state and loss curve (written to a temporary file, then renamed); the
same command resumes it and ends bit-identical to an uninterrupted run. The facts-known
fraction is extract's own rule (:func:`kisstore.extract.keys.item_pass`) on the saved folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kisstore import failpoints
from kisstore.errors import InputError
from kisstore.zoo.world import is_zoo

MODEL_MARKER = "kisstore-zoo-model"
INFO = "zoo_train.json"
STATE = "train-state.pt"


@dataclass
class TrainConfig:
    """What makes one width's run: two runs with equal configs produce equal weights."""

    layers: int = 4
    steps: int | None = None  # optimizer steps; None: from ``tokens``, else DEFAULT_STEPS
    tokens: int | None = None  # training tokens (non-padding), rounded up to whole steps
    seed: int = 0
    batch: int = 16  # documents per step
    lr: float = 3e-3  # peak at width <= LR_WIDTH (see peak_lr); warm-up over 5 % of the steps, cosine to 10 %
    weight_decay: float = 0.0
    vocab_size: int = 1024
    max_length: int = 128  # tokens per document (truncation)
    checkpoints: int = 0  # intermediate snapshots kept
    ffn_mult: int = 4  # d_ff = ffn_mult × width
    head_dim: int = 32


LR_WIDTH = 128  # wider models get lr · LR_WIDTH / width
DEFAULT_STEPS = 600  # measured: w128 knows 94 % of a 150-entity world after 600 steps


@dataclass
class TrainResult:
    width: int
    folder: Path
    known_fraction: float
    skipped: bool = False
    info: dict = field(default_factory=dict)


def parse_widths(text: str) -> list[int]:
    """'64,128,256' → [64, 128, 256]: positive whole numbers, no repeats."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p.isdigit() or int(p) < 1 for p in parts):
        raise InputError(f"--widths must be positive whole numbers separated by commas (e.g. 64,128), got {text!r}")
    widths = [int(p) for p in parts]
    if len(set(widths)) != len(widths):
        raise InputError(f"--widths lists a width twice: {text!r}")
    return widths


def heads_for(width: int, head_dim: int = 32) -> int:
    """Attention heads for a width: head_dim near ``head_dim`` (the largest divisor of the width
    at most width // head_dim, at least 1)."""
    h = max(1, width // head_dim)
    while width % h:
        h -= 1
    return h


def model_config(width: int, cfg: TrainConfig, vocab_size: int, bos: int, eos: int, pad: int):
    """A ``LlamaConfig`` that differs between widths only in hidden size, d_ff and heads."""
    from transformers import LlamaConfig

    heads = heads_for(width, cfg.head_dim)
    return LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=cfg.ffn_mult * width,
                       num_hidden_layers=cfg.layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=cfg.max_length, bos_token_id=bos, eos_token_id=eos,
                       pad_token_id=pad, tie_word_embeddings=False, attention_dropout=0.0)


def doc_order(n_docs: int, seed: int, step: int, batch: int) -> list[int]:
    """The documents of ``step``: the step-th slice of a stream of seeded per-epoch permutations."""
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, at = divmod(start + len(out), n_docs)
        perm = np.random.default_rng([seed, epoch]).permutation(n_docs)
        out += perm[at:at + batch - len(out)].tolist()
    return out


def steps_for_tokens(lengths: list[int], tokens: int, seed: int, batch: int) -> int:
    """The fewest steps whose documents hold at least ``tokens`` tokens."""
    seen, step = 0, 0
    while seen < tokens:
        seen += sum(lengths[i] for i in doc_order(len(lengths), seed, step, batch))
        step += 1
    return step


def peak_lr(lr: float, width: int) -> float:
    """Adam's peak learning rate for a width: ``lr`` up to LR_WIDTH, then ∝ 1/width (as muP
    scales hidden weights' Adam steps): at one rate, wider models learned the world more slowly."""
    return lr * min(1.0, LR_WIDTH / width)


def lr_at(step: int, steps: int, peak: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def snapshot_steps(steps: int, k: int) -> list[int]:
    """K intermediate steps, evenly spaced (the final model is not one of them)."""
    return sorted({round(steps * (j + 1) / (k + 1)) for j in range(k)} - {0, steps})


def read_world(out: Path) -> tuple[list[str], list]:
    """The training documents and the items of zoo world ``out`` (refusing anything else)."""
    from kisstore.data.items import load_items

    if not Path(out).is_dir():
        raise InputError(f"{out} does not exist: make a world first (kisstore zoo world {out})")
    if not is_zoo(out):
        raise InputError(f"{out} is not a zoo world (no zoo world.json); make one with kisstore zoo world")
    facts = Path(out) / "facts.json"
    try:
        raw = json.loads(facts.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{facts} cannot be read as a JSON list of facts: {e}") from e
    if not raw:
        raise InputError(f"{out} holds a world without facts ({facts} is empty): nothing to learn")
    items = load_items(str(facts)).items
    try:
        docs = [json.loads(line)["text"] for line in (Path(out) / "train.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{out}/train.jsonl cannot be read as JSON lines with a text field: {e}") from e
    if not docs:
        raise InputError(f"{out}/train.jsonl holds no documents")
    return docs, items


def known_fraction(folder: Path, items, device: str) -> tuple[float, int]:
    """Fraction of ``items`` the saved model in ``folder`` knows, by extract's rule (greedy argmax
    reproduces every target token), and the count."""
    from kisstore.extract.keys import item_pass
    from kisstore.models.loading import load_model

    lm = load_model(str(folder), device=device, dtype="float32")
    r = item_pass(lm, items, [0], progress=False)
    return float(r.known.mean()), int(r.known.sum())


def _atomic_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    failpoints.hit("train_checkpoint")
    os.replace(tmp, path)


def _save_folder(model, tokenizer, folder: Path, info: dict, items, device: str) -> dict:
    """Save an HF folder (weights, tokenizer, then ``zoo_train.json`` with its known fraction) through
    a temporary folder: ``folder`` is either absent, complete, or holds only a run's checkpoints."""
    tmp = folder.with_name("." + folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    frac, n = known_fraction(tmp, items, device)
    info = {**info, "known_fraction": frac, "n_known": n, "n_items": len(items)}
    (tmp / INFO).write_text(json.dumps(info, indent=1))
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda p: p.name == INFO):  # the info file last: it says "complete"
        os.replace(f, folder / f.name)
    tmp.rmdir()
    return info


def _done(folder: Path, want: dict) -> dict | None:
    """The info of a complete folder of the same run, None when there is none; refuse another run's."""
    f = folder / INFO
    if not f.is_file():
        return None
    info = json.loads(f.read_text())
    if info.get("run") != want:
        raise InputError(f"{folder} holds a model trained with other settings ({_differ(info.get('run'), want)}); "
                         "choose a new OUT or remove that folder")
    return info


def _differ(had, want: dict) -> str:
    """'steps 600 ≠ 601, …': the settings in which a stored run differs from this one."""
    had = had if isinstance(had, dict) else {}
    keys = sorted(k for k in set(had) | set(want) if had.get(k) != want.get(k))
    return ", ".join(f"{k} {had.get(k)} ≠ {want.get(k)}" for k in keys)


def _batch(tokenizer, docs: list[str], idx: list[int], max_length: int, device: str):

    enc = tokenizer([docs[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), labels.to(device)


def train_family(out: str | Path, widths: list[int], cfg: TrainConfig, *, device: str = "auto",
                 threads: int | None = None, untrained_twins: bool = False, progress: bool = True,
                 checkpoint_seconds: float = 120.0) -> list[TrainResult]:
    """Train one model per width on the world in ``out`` into ``out/w<width>/`` (resuming what a
    killed run left; skipping widths already complete with the same settings)."""
    import torch
    import transformers

    from kisstore.limits import check_threads
    from kisstore.models.loading import pick_device
    from kisstore.zoo.tokenizer import load_or_train

    out = Path(out)
    docs, items = read_world(out)
    if cfg.steps is not None and cfg.tokens is not None:
        raise InputError("give --tokens or --steps, not both")
    for name in ("steps", "tokens"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise InputError(f"--{name} must be positive, got {v}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise InputError(f"--lr must be a positive number, got {cfg.lr}")
    if cfg.layers < 1:
        raise InputError(f"--layers must be positive, got {cfg.layers}")
    if cfg.checkpoints < 0:
        raise InputError(f"--checkpoints must be 0 or more, got {cfg.checkpoints}")
    check_threads(threads)
    dev = pick_device(device)
    transformers.utils.logging.disable_progress_bar()  # the training bar is ours
    if threads is not None:
        torch.set_num_threads(threads)
    tokenizer = load_or_train(out / "tokenizer", docs, cfg.vocab_size)
    lengths = [len(x) for x in tokenizer(docs, truncation=True, max_length=cfg.max_length)["input_ids"]]
    steps = cfg.steps or (steps_for_tokens(lengths, cfg.tokens, cfg.seed, cfg.batch) if cfg.tokens
                          else DEFAULT_STEPS)
    tok_sha = _sha(out / "tokenizer" / "tokenizer.json")
    runs = {w: {**asdict(cfg), "lr": peak_lr(cfg.lr, w), "steps": steps, "width": w, "tokenizer_sha256": tok_sha}
            for w in widths}
    for w, run in runs.items():  # refuse another run's folder before training anything
        for folder in (out / f"w{w}", out / f"w{w}-untrained"):
            _done(folder, run)
    results = []
    for width, run in runs.items():
        results += _train_width(out, width, run, cfg, steps, docs, items, tokenizer, dev, threads,
                                untrained_twins, progress, checkpoint_seconds)
    return results


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train_width(out, width, run, cfg, steps, docs, items, tokenizer, dev, threads, untrained_twins, progress,
                 checkpoint_seconds) -> list[TrainResult]:
    import torch
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    folder = out / f"w{width}"
    results = []
    mcfg = model_config(width, cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                        tokenizer.pad_token_id)
    base = {"kind": MODEL_MARKER, "width": width, "run": run, "device": dev, "threads": threads,
            "d_ff": mcfg.intermediate_size, "n_heads": mcfg.num_attention_heads, "n_layers": cfg.layers}
    done = _done(folder, run)
    twin = out / f"w{width}-untrained"
    twin_done = _done(twin, run) if untrained_twins else True
    if done is not None:
        (folder / STATE).unlink(missing_ok=True)  # a run killed between its last two writes
    if done is not None and twin_done is not None:
        results.append(TrainResult(width, folder, done["known_fraction"], True, done))
        return results
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(mcfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    base["n_params"] = int(n_params)
    if twin_done is None:
        info = _save_folder(model, tokenizer, twin, {**base, "untrained": True, "steps_done": 0}, items, dev)
        results.append(TrainResult(width, twin, info["known_fraction"], False, info))
    if done is not None:
        results.insert(0, TrainResult(width, folder, done["known_fraction"], True, done))
        return results
    peak = run["lr"]
    opt = torch.optim.AdamW(model.parameters(), lr=peak, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    state_file = folder / STATE
    step, losses, tokens_seen, seconds, cpu = 0, [], 0, 0.0, 0.0
    if state_file.is_file():
        st = torch.load(state_file, map_location=dev, weights_only=True)
        if st["run"] != run:
            raise InputError(f"{folder} holds a checkpoint of a run with other settings ({_differ(st['run'], run)}); "
                             "choose a new OUT or remove that folder")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        torch.set_rng_state(st["rng"])
        step, losses, tokens_seen = st["step"], list(st["losses"]), st["tokens_seen"]
        seconds, cpu = st["seconds"], st["cpu_seconds"]
    folder.mkdir(parents=True, exist_ok=True)
    snaps = set(snapshot_steps(steps, cfg.checkpoints))
    every = max(1, steps // 20)
    model.train()
    bar = tqdm(total=steps, initial=step, desc=f"train w{width}", unit="step", disable=not progress)
    t0, c0, last_ckpt = time.perf_counter(), time.process_time(), time.perf_counter()

    def state() -> dict:
        return {"run": run, "step": step, "model": model.state_dict(), "optim": opt.state_dict(),
                "rng": torch.get_rng_state(), "losses": losses, "tokens_seen": tokens_seen,
                "seconds": seconds + time.perf_counter() - t0, "cpu_seconds": cpu + time.process_time() - c0}

    while step < steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, peak)
        ids, mask, labels = _batch(tokenizer, docs, doc_order(len(docs), cfg.seed, step, cfg.batch),
                                   cfg.max_length, dev)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        tokens_seen += int(mask.sum())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        failpoints.hit("train_step")
        if step in snaps:
            model.eval()
            _save_folder(model, tokenizer, folder / "checkpoints" / f"step-{step}",
                         {**base, "untrained": False, "steps_done": step, "losses": losses}, items, dev)
            model.train()
        if step < steps and (step % every == 0 or step in snaps
                             or time.perf_counter() - last_ckpt > checkpoint_seconds):
            _atomic_save(state(), state_file)
            last_ckpt = time.perf_counter()
    bar.close()
    model.eval()
    secs, cpu = seconds + time.perf_counter() - t0, cpu + time.process_time() - c0
    info = _save_folder(model, tokenizer, folder, {
        **base, "untrained": False, "steps_done": step, "tokens_seen": tokens_seen, "train_seconds": secs,
        "tokens_per_second": tokens_seen / secs if secs > 0 else None, "cpu_seconds": cpu, "losses": losses,
        "snapshots": sorted(snaps)}, items, dev)
    state_file.unlink(missing_ok=True)
    results.insert(0, TrainResult(width, folder, info["known_fraction"], False, info))
    return results
