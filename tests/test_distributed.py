"""DeepSpeed ZeRO in two processes (torchrun, gloo on CPU) trains exactly like one plain-torch process.

tests/dist_train.py trains a tiny model with the OREO trainer (policy + value model, 3 steps), with
SFT (3 steps), and with DPO and KTO (3 steps each, a frozen reference each). Every run uses
micro_batch_size=2, batch_size=4: one process accumulates two micro-batches per step; two ranks take
one micro-batch each (rank r gets its contiguous share of the global batch) and average gradients.
Losses are means per micro-batch, so every run computes the same global gradient, and the final
parameters, logged losses, gradient norms and learning rates must agree up to float32 rounding; and
each run's saved checkpoints (the trainers' ``save``) must hold exactly its final parameters. ZeRO-2 is
the main case; ZeRO-3 (every parameter partitioned) also checks that partitioned parameters are
gathered for the forward pass and for saving.

The first DeepSpeed start on a machine compiles a shared-memory op (about a minute, cached afterwards
in ~/.cache/torch_extensions).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("dist_train.py")
ROOT = SCRIPT.parents[1]
PARAM_TOL = 1e-5      # max |Δ| over every parameter (float32 training, weights of order 1)
METRIC_RTOL = 1e-5    # logged losses, gradient norms, learning rates
STEPS = [("oreo", s) for s in (1, 2, 3)] + [("sft", s) for s in (1, 2, 3)]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="deepspeed is not installed: the ZeRO engine cannot be tested")


def _env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    return env


def _command(which, out: Path) -> tuple[str, list[str]]:
    if which == "torch":
        return "single-process torch run", [sys.executable, str(SCRIPT), str(out), "--engine", "torch", "--checks"]
    return (f"torchrun --nproc_per_node 2 DeepSpeed ZeRO-{which} run",
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
             str(out), "--engine", "deepspeed", "--zero-stage", str(which), "--checks"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs("torch")``: the single-process run's output folder; ``runs(2)``, ``runs(3)``: the two-rank
    ZeRO-2 / ZeRO-3 run's. Each runs once per module, when first asked for (a failure is remembered);
    the short single-process run overlaps the first DeepSpeed run's start-up."""
    base = tmp_path_factory.mktemp("dist")
    started: dict = {}
    finished: dict = {}

    def start(which):
        if which not in started:
            out = base / (f"zero{which}" if which != "torch" else "torch")
            what, args = _command(which, out)
            proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            started[which] = (out, what, proc)

    def get(which):
        if which not in finished:
            start(which)
            if which != "torch":
                start("torch")
            out, what, proc = started[which]
            try:
                output, _ = proc.communicate(timeout=600)
                failure = None if proc.returncode == 0 else (
                    f"{what} failed (exit {proc.returncode}); its output:\n{output}")
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
                failure = f"{what} timed out after 600s; its output:\n{output}"
            finished[which] = (out, failure)
        out, failure = finished[which]
        if failure:
            pytest.fail(failure, pytrace=False)
        return out

    yield get
    for _, _, proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_on_two_ranks_ends_with_the_single_process_parameters(runs, stage):
    zero, single = (torch.load(runs(which) / "params.pt") for which in (stage, "torch"))
    assert single.keys() == zero.keys() == {"initial_policy", "oreo_policy", "oreo_value", "sft_policy",
                                            "value_round_trip", "resumed_from", "oreo_policy_resumed",
                                            "oreo_value_resumed", "dpo_policy", "kto_policy"}
    assert _max_diff(single["initial_policy"], zero["initial_policy"]) == 0
    # training moved the weights far beyond the tolerance, so the comparison below means something
    assert _max_diff(single["oreo_policy"], single["initial_policy"]) > 100 * PARAM_TOL
    diffs = {name: _max_diff(single[name], zero[name])
             for name in ("oreo_policy", "oreo_value", "sft_policy", "dpo_policy", "kto_policy")}
    print(f"max |Δparam| single process vs ZeRO-{stage} on 2 ranks: {diffs}")
    # KTO's reference point is a mean over the micro-batch, averaged over ranks: one process with two
    # accumulated micro-batches and two ranks with one each see it through other roundings
    assert all(d < (10 * PARAM_TOL if name == "kto_policy" else PARAM_TOL) for name, d in diffs.items()), diffs


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_on_two_ranks_logs_what_the_single_process_logs(runs, stage):
    zero, single = (json.loads((runs(which) / "logs_rank0.json").read_text()) for which in (stage, "torch"))
    assert [(r["stage"], r["step"]) for r in single] == STEPS
    assert [(r["stage"], r["step"]) for r in zero] == STEPS
    keys = ["value_loss", "policy_loss", "kl", "policy_grad_norm", "value_grad_norm", "policy_lr", "value_lr",
            "loss", "grad_norm", "lr"]
    for a, b in zip(single, zero):
        for k in keys:
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=METRIC_RTOL, abs=1e-7), (
                    f"{a['stage']} step {a['step']} {k}: single process {a[k]}, rank 0 of ZeRO-{stage} {b[k]} "
                    "(rank 0 must log the mean over ranks of the step's micro-batch losses)")
    # only rank 0 logs: a shared metrics file gets one row per step
    assert json.loads((runs(stage) / "logs_rank1.json").read_text()) == []


def _saved(out: Path) -> dict:
    """The trainers' saved checkpoints, named like the in-memory state dicts in params.pt."""
    value = {f"backbone.{k}": v for k, v in load_file(str(out / "oreo" / "value" / "model.safetensors")).items()}
    value.update({f"head.{k}": v for k, v in load_file(str(out / "oreo" / "value" / "value_head.safetensors")).items()})
    return {"oreo_policy": load_file(str(out / "oreo" / "policy" / "model.safetensors")), "oreo_value": value,
            "sft_policy": load_file(str(out / "sft" / "model.safetensors")),
            "dpo_policy": load_file(str(out / "dpo" / "model.safetensors")),
            "kto_policy": load_file(str(out / "kto" / "model.safetensors"))}


@pytest.mark.parametrize("which", [2, 3, "torch"])
def test_saved_checkpoints_hold_the_final_parameters(runs, which):
    out = runs(which)
    params, saved = torch.load(out / "params.pt"), _saved(out)
    for name, tensors in saved.items():
        # tied LM head: save_pretrained stores the embedding once
        assert set(tensors) | {"lm_head.weight"} >= set(params[name]) >= set(tensors), name
        for k, v in tensors.items():
            assert v.shape == params[name][k].shape, (name, k, v.shape, params[name][k].shape)
            assert torch.equal(v.double(), params[name][k]), (name, k)


@pytest.mark.parametrize("which", [2, 3, "torch"])
def test_saved_value_model_loads_back_with_the_same_values(runs, which):
    """Save under ZeRO, load into a fresh engine of the same kind: same values (backbone and head)."""
    r = torch.load(runs(which) / "params.pt")["value_round_trip"]
    assert r["trained"].abs().max() > 1e-3  # the head was trained away from its zero start
    torch.testing.assert_close(r["values"], r["trained"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("which", [2, 3, "torch"])
def test_crashed_run_resumes_to_the_uninterrupted_parameters(runs, which):
    """The engines' saved states (weights, optimizer, scheduler) resume a crashed OREO stage exactly."""
    params = torch.load(runs(which) / "params.pt")
    assert params["resumed_from"] == 2  # restored from the step-2 checkpoint, not restarted
    for name in ("oreo_policy", "oreo_value"):
        assert _max_diff(params[name], params[f"{name}_resumed"]) < 1e-6, name
