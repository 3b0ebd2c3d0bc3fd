"""``python -m benchmarks [--quick] [--device cuda]``: run every benchmark, print the table,
save ``benchmarks/results-<cpu|cuda>.json`` and rewrite ``docs/benchmarks.md``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class Settings:
    """Sizes of one run; chosen so a full CPU run ends well inside 15 minutes on 2 loaded cores."""

    corpus_tokens: int
    batch_tokens: int
    max_length: int
    cov_layers: tuple[int, ...]  # layers the per-layer baseline runs on
    p_layers: tuple[int, ...]  # layers the paper's P method runs on
    n_small: int
    n_large: int
    measure_large: bool
    store_tokens: int  # corpus tokens of the store extracted for benchmark 5
    shard_tokens: int = 8192  # corpus tokens of benchmark 8's two extractions


def settings(device: str, quick: bool, n_layers: int) -> Settings:
    last, mid = n_layers - 1, n_layers // 2
    if device.startswith("cuda"):
        return Settings(corpus_tokens=16384 if quick else 65536, batch_tokens=8192, max_length=1024,
                        cov_layers=(0, mid, last) if quick else tuple(range(n_layers)),
                        p_layers=(mid,) if quick else (0, mid, last), n_small=16, n_large=128,
                        measure_large=True, store_tokens=8192, shard_tokens=65536)
    if quick:
        return Settings(corpus_tokens=4096, batch_tokens=4096, max_length=1024, cov_layers=(0, last),
                        p_layers=(mid,), n_small=8, n_large=128, measure_large=False, store_tokens=2048,
                        shard_tokens=4096)
    # batches of 4096 tokens: `kisstore extract`'s default --batch-tokens, what users run
    return Settings(corpus_tokens=12288, batch_tokens=4096, max_length=1024, cov_layers=(0, mid, last),
                    p_layers=(0, last), n_small=16, n_large=128, measure_large=True, store_tokens=4096)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="Smaller corpus, fewer layers and items (a few minutes).")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu).")
    ap.add_argument("--model", choices=["embedded", "random"], default="embedded",
                    help="The embedded SmolLM2-135M, or its configuration with random weights "
                         "(used automatically when the embedded model is not installed).")
    ap.add_argument("--only", default="cov,p,memory,scale,edit",
                    help="Comma-separated subset of: cov (benchmarks 1, 3, 4), p (2), memory (5), scale (6), "
                         "edit (7: lifelong editing's update rules; alone, it saves to "
                         "benchmarks/results-edit-<cpu|cuda>.json); "
                         "also shards (not in the default: 8, `kisstore extract --shards 2` on a LocalCluster "
                         "against one process; alone, it saves to benchmarks/results-shards-<cpu|cuda>.json); "
                         "also profile (not in the default: where the corpus pass's time goes, by kind of "
                         "kernel, written to --profile-out).")
    ap.add_argument("--profile-out", type=Path, default=None, metavar="PATH",
                    help="Where --only profile writes its table (default: benchmarks/profile-<cpu|cuda>.txt).")
    ap.add_argument("--batch-tokens", type=int, default=None, metavar="N",
                    help="Token budget of the corpus batches (default: 4096 on CPU, kisstore extract's "
                         "default, and 8192 on CUDA); for trying how batch size moves the overhead and efficiency figures.")
    ap.add_argument("--compile", action="store_true",
                    help="Run the corpus pass as `kisstore extract --compile` does (decoder layers through "
                         "torch.compile), and the forward baselines compiled alike.")
    ap.add_argument("--json", type=Path, default=None,
                    help="Where to save the results (default: benchmarks/results-<cpu|cuda>.json).")
    ap.add_argument("--doc", type=Path, default=None, help="Markdown to rewrite (default: docs/benchmarks.md).")
    ap.add_argument("--render", action="store_true", help="Only rewrite the markdown from saved results.")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import report

    args = parse(argv)
    doc = args.doc or report.DOC
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    if args.render:
        print(f"wrote {report.render(doc=doc)}")
        return 0
    if args.batch_tokens is not None and args.batch_tokens < 1:
        print(f"--batch-tokens must be positive, got {args.batch_tokens}", file=sys.stderr)
        return 2

    import torch

    from benchmarks import common

    if kind == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    only = set(args.only.split(","))
    unknown = only - {"cov", "p", "memory", "scale", "profile", "edit", "shards"}
    if unknown:
        print(f"--only: unknown part(s) {', '.join(sorted(unknown))}; use cov, p, memory, scale, edit, profile, shards",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    info = common.machine(args.device)
    print(f"kisstore benchmarks on {info['cpu']} ({info['cores']} cores), device {args.device}"
          + (f" ({info['gpu']})" if info.get("gpu") else "") + f", torch {info['torch']}", flush=True)

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    lm, model_note = common.load_bench_model(args.device, args.model)
    embedded = "random" not in lm.source.kind  # benchmarks 5 and 8 run the command line on the embedded model
    cfg = settings(args.device, args.quick, lm.n_layers)
    if args.batch_tokens is not None:
        cfg = dataclasses.replace(cfg, batch_tokens=args.batch_tokens)
    progress(f"model: {model_note}; {lm.n_layers} layers, d_ff {lm.d_ff}")
    results: list[common.Result] = []
    notes: list[str] = []
    covs = None

    batches = []
    if only & {"cov", "p", "profile"}:
        from kisstore.data.corpus import resolve_corpus
        from kisstore.extract.covariance import corpus_batches

        batches = list(corpus_batches(lm.tokenizer, resolve_corpus("embedded"), max_length=cfg.max_length,
                                      batch_tokens=cfg.batch_tokens, token_cap=cfg.corpus_tokens))

    profile = None
    if "profile" in only:
        from benchmarks import profile as profile_mod

        out = args.profile_out or Path(__file__).parent / f"profile-{kind}.txt"
        progress(f"profile: kisstore's corpus pass over {min(len(batches), 3)} batches")
        profile = profile_mod.run(lm, batches[:3], device=args.device, out=out, compile=args.compile,
                                  warmup=warmups(batches[0], args.compile), progress=progress)
        if only == {"profile"}:
            print(f"wrote {out}")
            return 0

    if "cov" in only or "p" in only:
        from benchmarks import covariance

        warm = warmups(batches[0], args.compile)
        progress(f"benchmarks 1, 3, 4: corpus pass over {sum(b.tokens for b in batches):,} tokens in "
                 f"{len(batches)} batches; layer_stats on layers {list(cfg.cov_layers)}")
        if args.compile:
            progress("compiling the decoder layers (warm-up batches of 3 shapes)")
        run = covariance.run(lm, batches, sample_layers=cfg.cov_layers, device=args.device, warmup=warm,
                             compile=args.compile, progress=progress)
        results += run.results
        covs = run.covs

    if "p" in only:
        from benchmarks import pmatrix
        from kisstore.data.items import load_items

        items = load_items(None).items
        progress(f"benchmark 2: P matrices, paper's method at N={cfg.n_small} on layers {list(cfg.p_layers)}")
        results += pmatrix.run(lm, items, covs, sample_layers=cfg.p_layers, n_small=cfg.n_small,
                               n_large=cfg.n_large, measure_large=cfg.measure_large, device=args.device,
                               progress=progress)

    if "edit" in only:
        from benchmarks import editing

        progress("benchmark 7: MEMIT/AlphaEdit update rules, one step vs re-solving every edit so far")
        results += editing.run(d_ff=lm.d_ff, d_model=int(lm.model.config.hidden_size), progress=progress)
        progress("benchmark 7: MEMIT on the model, one step vs re-solving every edit so far")
        results += editing.run_model(lm, batch=5 if args.quick else 10, steps=3 if args.quick else 6,
                                     progress=progress)

    if "memory" in only:
        if kind == "cuda":
            notes.append("Benchmark 5 (analysis time and memory) is a CPU benchmark; see the CPU section.")
        elif "random" in lm.source.kind:
            notes.append("Benchmark 5 skipped: it runs `kisstore extract` on the embedded model, not installed here.")
        else:
            from benchmarks import memory

            del lm  # the children need the memory, not this process
            import gc

            gc.collect()
            progress(f"benchmark 5: kisstore extract (128 items, {cfg.store_tokens} corpus tokens) and analyze")
            results += memory.run(device=args.device, n_items=128, corpus_tokens=cfg.store_tokens, progress=progress)

    if "shards" in only:
        if not embedded:
            notes.append("Benchmark 8 skipped: it runs `kisstore extract` on the embedded model, not installed here.")
        else:
            from benchmarks import sharding

            progress(f"benchmark 8: kisstore extract ({cfg.shard_tokens} corpus tokens), one process vs "
                     "2 shards on a LocalCluster")
            results += sharding.run(device=args.device, corpus_tokens=cfg.shard_tokens, n_shards=2, progress=progress)

    scale = None
    if "scale" in only:
        from benchmarks import scale as scale_mod

        eff = next((r for r in results if r.key == "flop_efficiency"), None)
        gemm = None
        if kind == "cuda" and eff is not None:
            gemm = {"float32": eff.details["gemm_gflops"] * 1e9,
                    "bfloat16": common.gemm_flops(args.device, dtype="bfloat16")["best"]}
        value = eff.value if eff is not None else 0.5
        source = (f"measured on SmolLM2-135M, {kind}, this run" if eff is not None
                  else "assumed (benchmark 4 not run)")
        scale = scale_mod.plan(value, gemm, efficiency_source=source)

    elapsed = time.perf_counter() - start
    payload = {
        "command": "python -m benchmarks" + (" --quick" if args.quick else "")
                   + (f" --device {args.device}" if kind == "cuda" else "")
                   + (f" --batch-tokens {args.batch_tokens}" if args.batch_tokens is not None else "")
                   + (" --compile" if args.compile else "")
                   + (f" --only {args.only}" if args.only != "cov,p,memory,scale,edit" else ""),
        "mode": "quick" if args.quick else "full", "machine": info, "model": model_note,
        "settings": cfg.__dict__, "results": [r.as_dict() for r in results], "scale": scale,
        "notes": notes, "elapsed_s": elapsed, **({"profile": profile} if profile else {}),
    }
    path = args.json or (report.EDIT_RESULTS[kind] if only == {"edit"} else
                         report.SHARDS_RESULTS[kind] if only == {"shards"} else report.RESULTS[kind])
    report.save(payload, path)
    print()
    print(report.table(payload["results"]))
    print(f"\n{elapsed / 60:.1f} min; results in {path}")
    if args.json is None or args.doc is not None:
        print(f"wrote {report.render({**report.RESULTS, kind: path}, doc=doc)}")
    return 0


def warmups(batch, compile: bool = False) -> list:
    """Short slices of the first batch, to pay first-call costs before the timings. With
    ``compile``, slices of three shapes: the compiler makes a static graph for the first shape
    and a dynamic-shape one at the second, which the batches then reuse."""
    from kisstore.extract.covariance import Batch

    shapes = [(1, 64), (2, 48), (3, 40)] if compile else [(1, 64)]
    out = []
    for rows, cols in shapes:
        ids, mask = batch.input_ids[:rows, :cols], batch.attention_mask[:rows, :cols]
        out.append(Batch(ids, mask, None, int(mask.sum())))
    return out


if __name__ == "__main__":
    sys.exit(main())
