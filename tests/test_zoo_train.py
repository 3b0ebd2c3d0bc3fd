"""kisstore zoo train: a micro-zoo through the ordinary commands, resume after kill -9, bad inputs,
and the known fraction against plain greedy decoding."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from kisstore.zoo.train import (
    doc_order,
    heads_for,
    parse_widths,
    peak_lr,
    snapshot_steps,
    steps_for_tokens,
)
from tests.conftest import run_cli

WORLD = ("--entities", "10", "--seed", "1")
TRAIN = ("--widths", "16,32", "--layers", "2", "--steps", "120", "--threads", "1", "--quiet", "--untrained-twins", "--checkpoints", "1")


@pytest.fixture(scope="module")
def micro_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "z"
    run_cli("zoo", "world", str(out), *WORLD, check=True)
    r = run_cli("zoo", "train", str(out), *TRAIN, check=True)
    return out, r.stdout


def _info(folder):
    return json.loads((folder / "zoo_train.json").read_text())


def test_micro_zoo_runs_world_train_extract_analyze_to_a_scaling_table(micro_zoo, tmp_path):
    import pandas as pd
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = micro_zoo
    n_params = {}
    for w in (16, 32):  # plain transformers loads each folder, tokenizer included
        model = AutoModelForCausalLM.from_pretrained(out / f"w{w}")
        tok = AutoTokenizer.from_pretrained(out / f"w{w}")
        assert model.config.hidden_size == w and model.config.intermediate_size == 4 * w
        assert tok("Kalomi is")["input_ids"] == AutoTokenizer.from_pretrained(out / "tokenizer")("Kalomi is")["input_ids"]
        n_params[w] = sum(p.numel() for p in model.parameters())
        assert _info(out / f"w{w}")["n_params"] == n_params[w]
    store = tmp_path / "zoo.zarr"
    run_cli("extract", "--model", str(out / "w16"), "--model", str(out / "w32"), "--items", str(out / "facts.json"),
            "--corpus", str(out / "heldout.jsonl"), "--store", str(store), "--threads", "1", "--quiet", check=True)
    run_cli("analyze", str(store), "--items", "intersect", "--bootstrap", "0", "--quiet",
            "--table-out", str(tmp_path / "table"), check=True)
    table = pd.read_csv(tmp_path / "table.csv")
    for _, rows in table.groupby("layer"):
        assert len(rows) == 2  # one row per model
        assert sorted(rows["n_params"].tolist()) == sorted(n_params.values())
    by_model = table.groupby("model")["n_params"].first().sort_values()
    assert list(by_model) == [n_params[16], n_params[32]] and by_model.iloc[0] < by_model.iloc[1]
    assert table["n_items"].min() >= 2 and np.isfinite(table["p_matrix_excess_kurtosis"]).all()


def test_every_width_sees_the_same_data_and_the_known_fraction_is_greedy_decodings(micro_zoo):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, stdout = micro_zoo
    facts = json.loads((out / "facts.json").read_text())
    a, b = _info(out / "w16"), _info(out / "w32")
    assert a["tokens_seen"] == b["tokens_seen"] and a["steps_done"] == b["steps_done"] == 120
    assert len(a["losses"]) == 120 and a["losses"][-1] < a["losses"][0]
    for w in (16, 32):
        model = AutoModelForCausalLM.from_pretrained(out / f"w{w}").eval()
        tok = AutoTokenizer.from_pretrained(out / f"w{w}")
        known = 0
        for f in facts:  # greedy decoding of as many tokens as the target has, from the prompt alone
            rw = f["requested_rewrite"]
            prompt = rw["prompt"].replace("{}", rw["subject"])
            p_ids = tok(prompt)["input_ids"]
            full = tok(prompt + " " + rw["target_true"]["str"])["input_ids"]
            assert full[:len(p_ids)] == p_ids
            target = full[len(p_ids):]
            with torch.no_grad():
                gen = model.generate(torch.tensor([p_ids]), attention_mask=torch.ones(1, len(p_ids), dtype=torch.long),
                                     max_new_tokens=len(target), do_sample=False, pad_token_id=tok.pad_token_id)
            known += gen[0, len(p_ids):].tolist() == target
        info = _info(out / f"w{w}")
        assert info["n_known"] == known and info["known_fraction"] == pytest.approx(known / len(facts))
    assert _info(out / "w32")["n_known"] > 0
    assert f"knows {_info(out / 'w32')['n_known']}/{len(facts)} facts" in stdout


def test_untrained_twins_and_snapshots_are_model_folders(micro_zoo):
    from safetensors.numpy import load_file

    out, _ = micro_zoo
    twin, trained = _info(out / "w16-untrained"), _info(out / "w16")
    assert twin["untrained"] and twin["steps_done"] == 0 and twin["n_params"] == trained["n_params"]
    assert twin["n_known"] <= trained["n_known"]
    snap = out / "w16" / "checkpoints" / "step-60"
    assert _info(snap)["steps_done"] == 60 and _info(snap)["losses"] == trained["losses"][:60]
    t, s, u = (load_file(f / "model.safetensors") for f in (out / "w16", snap, out / "w16-untrained"))
    name = "model.layers.0.mlp.down_proj.weight"
    assert not np.array_equal(t[name], s[name]) and not np.array_equal(s[name], u[name])
    assert not (out / "w16" / "train-state.pt").exists()  # a finished run leaves no optimizer state behind


def test_rerun_of_a_complete_family_skips_it_and_other_settings_are_refused(micro_zoo):
    out, _ = micro_zoo
    before = (out / "w16" / "model.safetensors").read_bytes()
    r = run_cli("zoo", "train", str(out), *TRAIN, check=True)
    assert "already trained" in r.stdout and (out / "w16" / "model.safetensors").read_bytes() == before
    r = run_cli("zoo", "train", str(out), "--widths", "16", "--steps", "121", "--quiet")
    assert r.returncode == 2 and "other settings" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "steps 120 ≠ 121" in r.stderr and "layers 2 ≠ 4" in r.stderr


@pytest.mark.parametrize("point", ["train_step:13", "train_checkpoint:2"])
def test_killed_training_resumes_bit_identical_to_an_uninterrupted_run(tmp_path, point):
    from safetensors.numpy import load_file

    args = ("--widths", "8", "--layers", "1", "--steps", "24", "--checkpoints", "1", "--threads", "1", "--quiet")
    runs = {}
    for name, env in (("plain", None), ("killed", {"KISSTORE_FAILPOINT": point})):
        out = tmp_path / name
        run_cli("zoo", "world", str(out), "--entities", "5", check=True)
        r = run_cli("zoo", "train", str(out), *args, env=env)
        if env:
            assert r.returncode == -signal.SIGKILL, r.stderr
            assert (out / "w8" / "train-state.pt").is_file() and not (out / "w8" / "zoo_train.json").exists()
            r = run_cli("zoo", "train", str(out), *args, check=True)
        runs[name] = out
    for folder in ("w8", "w8/checkpoints/step-12"):
        a, b = (load_file(runs[n] / folder / "model.safetensors") for n in ("plain", "killed"))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), folder
        assert _info(runs["plain"] / folder)["losses"] == _info(runs["killed"] / folder)["losses"]


def test_bad_inputs_are_one_line_errors_with_exit_2(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    empty = tmp_path / "empty"
    run_cli("zoo", "world", str(empty), "--entities", "5", check=True)
    (empty / "facts.json").write_text("[]")
    world = tmp_path / "world"
    run_cli("zoo", "world", str(world), "--entities", "5", check=True)
    cases = [[str(world), "--widths", w] for w in ("0", "64,abc", "-8", "", "16,16", "1.5")]
    cases += [[str(other)], [str(tmp_path / "missing")], [str(empty)],
              [str(world), "--steps", "5", "--tokens", "100"], [str(world), "--steps", "0"],
              [str(world), "--lr", "0"], [str(world), "--lr", "nan"]]
    for args in cases:
        r = run_cli("zoo", "train", *args, "--quiet")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("Error:") and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert [p.name for p in other.iterdir()] == ["notes.txt"] and (other / "notes.txt").read_text() == "mine"
    assert not any(p.name.startswith("w") for p in world.iterdir() if p.name != "world.json")


def test_data_order_schedule_and_heads_are_pure_functions():
    for step in range(6):  # every epoch of 10 documents in batches of 4 is a permutation, the same on every call
        assert doc_order(10, 3, step, 4) == doc_order(10, 3, step, 4)
    stream = [i for s in range(5) for i in doc_order(10, 3, s, 4)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20] and doc_order(10, 4, 0, 4) != doc_order(10, 3, 0, 4)
    lengths = list(range(5, 15))
    n = steps_for_tokens(lengths, 100, 3, 4)
    seen = [sum(lengths[i] for i in doc_order(10, 3, s, 4)) for s in range(n)]
    assert sum(seen) >= 100 > sum(seen[:-1])
    assert snapshot_steps(100, 3) == [25, 50, 75] and snapshot_steps(2, 5) == [1]
    assert [heads_for(w) for w in (8, 64, 96, 512)] == [1, 2, 3, 16] and parse_widths("64, 128") == [64, 128]
    assert [peak_lr(3e-3, w) for w in (16, 128, 256, 512)] == pytest.approx([3e-3, 3e-3, 1.5e-3, 7.5e-4])
