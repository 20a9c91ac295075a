"""End to end through the Hydra entry points on a trimmed embedded task (seconds, not minutes)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oreo.buffer import Buffer
from oreo.models import ValueModel, load_policy

ROOT = Path(__file__).resolve().parents[1]

TRIM = ["+experiment=smoke"]


def run(module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo")
    proc = run("oreo.train", f"run_dir={run_dir}", *TRIM)
    return run_dir, proc


def test_train_runs_every_stage_and_writes_the_run_directory(demo_run):
    run_dir, proc = demo_run
    accuracy = json.loads((run_dir / "metrics.json").read_text())
    details = json.loads((run_dir / "run.json").read_text())
    # RFT needs one batch of correct samples; a barely trained tiny model may not produce them.
    assert set(accuracy) | set(details.get("skipped", {})) == {"sft", "rft", "oreo"}
    for method, row in accuracy.items():
        assert set(row) == {"test", "heldout"}
        assert all(0.0 <= v <= 1.0 for v in row.values())
    assert details["buffer"]["n"] == 48 * 2
    for path in ["config.yaml", "metrics.jsonl", "checkpoints/sft/config.json",
                 "checkpoints/oreo/policy/config.json", "checkpoints/oreo/value/value_head.safetensors",
                 "checkpoints/oreo/trainer_state/policy/engine.pt", "checkpoints/oreo/trainer_state/value/engine.pt",
                 "checkpoints/sft/trainer_state/state.pt", "buffer/round_000", "eval/oreo-test.jsonl"]:
        assert (run_dir / path).exists(), path
    stages = {json.loads(line)["stage"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()}
    assert {"sft", "collect", "oreo", "evaluate"} <= stages
    assert ("rft" in stages) == ("rft" not in details.get("skipped", {}))
    assert "method" in proc.stdout and "oreo" in proc.stdout  # the accuracy table


def test_rerun_resumes_without_retraining(demo_run):
    run_dir, _ = demo_run
    before = (run_dir / "metrics.jsonl").read_text()
    run("oreo.train", f"run_dir={run_dir}", *TRIM)
    after = (run_dir / "metrics.jsonl").read_text()
    assert after == before  # nothing trained, collected or evaluated again


def test_evaluate_entry_point_searches_with_the_oreo_checkpoint(demo_run, tmp_path):
    run_dir, _ = demo_run
    args = [f"checkpoint={run_dir}/checkpoints/oreo", f"run_dir={tmp_path}", "evaluate.splits=[test]", *TRIM]
    proc = run("oreo.evaluate", *args, "search=beam", "search.width=2", "search.max_steps=4")
    metrics = json.loads((tmp_path / "search/beam-w2/metrics.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "search/beam-w2/test.jsonl").read_text().splitlines()]
    assert metrics["test"]["n"] == len(rows) > 0 and metrics["test"]["mean_tokens"] > 0
    assert metrics["test"]["accuracy"] == sum(r["correct"] for r in rows) / len(rows)
    assert all(r["tokens"] > 0 and (r["response"] is None) == (r["value"] is None) for r in rows)
    assert "beam-w2" in proc.stdout and "accuracy" in proc.stdout
    run("oreo.evaluate", *args, "search=majority", "search.n=3")
    assert json.loads((tmp_path / "search/majority-n3/metrics.json").read_text())["test"]["mean_samples"] == 3
    # a policy folder without value/ cannot run a value-guided strategy
    bad = run("oreo.evaluate", f"checkpoint={run_dir}/checkpoints/sft", f"run_dir={tmp_path}", "search=best_of_n",
              *TRIM, check=False)
    assert bad.returncode != 0 and "needs a value model" in bad.stderr


def reference_format_file(path: Path, n_problems: int = 20) -> Path:
    """The reference's {prompt, response, reward} lines for the smoke task: one right, two wrong per problem."""
    from oreo.tasks.arithmetic import ArithmeticConfig, ArithmeticTask

    task = ArithmeticTask(ArithmeticConfig(n_train=48, n_test=16, n_heldout=16))  # the smoke experiment's task
    lines = []
    for p in task.problems("train")[:n_problems]:
        for k in range(3):
            right = k == 0
            response = "".join(p.solution) if right else f"1+1={3 + k}\n#### {3 + k}"
            lines.append({"prompt": p.prompt, "response": response, "reward": int(right)})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path



def test_a_process_value_model_trains_on_the_buffer_and_scores_search(tmp_path):
    """stages=[...,prm]: a PRM on the buffer's inferred per-step targets (here from imported samples, one right
    and two wrong per problem), not evaluated as a policy; python -m oreo.evaluate value=... scores with it."""
    data = reference_format_file(tmp_path / "offline.jsonl")
    run_dir = tmp_path / "run"
    proc = run("oreo.train", f"run_dir={run_dir}", *TRIM, "stages=[sft,collect,prm]", f"collect.from_file={data}",
               "prm.train.batch_size=8", "prm.train.micro_batch_size=8")
    details = json.loads((run_dir / "run.json").read_text())
    assert set(details["accuracy"]) == {"sft"} and "prm" not in details.get("skipped", {})
    # 20 problems: the right solution's path and the two wrong ones, each with a target per step
    assert details["stages"]["prm"]["encode"]["kept"] == 60 and details["stages"]["prm"]["steps"] == 2 * (60 // 8)
    assert (run_dir / "checkpoints/prm/value_head.safetensors").exists() and "prm" in proc.stdout
    args = [f"checkpoint={run_dir}/checkpoints/sft", f"value={run_dir}/checkpoints/prm", f"run_dir={tmp_path}",
            "evaluate.splits=[test]", *TRIM]
    run("oreo.evaluate", *args, "search=best_of_n", "search.n=2")
    metrics = json.loads((tmp_path / "search/best_of_n-n2-prm/metrics.json").read_text())
    assert metrics["test"]["n"] > 0 and metrics["fingerprint"]["value"] == str(run_dir / "checkpoints/prm")
    run("oreo.evaluate", *args, "search=best_of_n", "search.n=2", "value=policy")   # the policy's own likelihood
    metrics = json.loads((tmp_path / "search/best_of_n-n2-policy/metrics.json").read_text())
    assert metrics["test"]["n"] > 0 and metrics["fingerprint"]["value"] == "policy"
    # the likelihood verifier: fitted on the run's buffer once, then reused
    verifier = [f"checkpoint={run_dir}/checkpoints/sft", f"run_dir={run_dir}", "evaluate.splits=[test]", *TRIM,
                "search=best_of_n", "search.n=2", "value=verifier"]
    proc = run("oreo.evaluate", *verifier)
    assert "fitted on 60 samples" in proc.stdout and (run_dir / "checkpoints/verifier/verifier.json").exists()
    assert json.loads((run_dir / "search/best_of_n-n2-verifier/metrics.json").read_text())["test"]["n"] > 0
    proc = run("oreo.evaluate", *verifier, "search=beam", "search.width=2", "search.max_steps=3")
    assert "fitted on" not in proc.stdout and (run_dir / "search/beam-w2-verifier/metrics.json").exists()


def test_the_prm_may_start_from_the_oreo_value(tmp_path):
    data = reference_format_file(tmp_path / "offline.jsonl")
    common = [*TRIM, f"collect.from_file={data}", "prm.train.batch_size=8", "prm.train.micro_batch_size=8",
              "prm.init=oreo"]
    bad = run("oreo.train", f"run_dir={tmp_path / 'bad'}", *common, "stages=[sft,collect,prm]", check=False)
    assert bad.returncode != 0 and "prm.init" in bad.stderr and "oreo stage first" in bad.stderr
    assert not (tmp_path / "bad" / "checkpoints" / "sft").exists()   # it failed before SFT
    run_dir = tmp_path / "run"
    run("oreo.train", f"run_dir={run_dir}", *common, "stages=[sft,collect,oreo,prm]")
    details = json.loads((run_dir / "run.json").read_text())
    assert {"oreo", "prm"} <= set(details["stages"]) and (run_dir / "checkpoints/prm/value_head.safetensors").exists()


def test_the_value_model_may_have_a_backbone_of_its_own(tmp_path):
    """model.value: the PRM on a larger backbone than the policy's, scoring the policy's search; a backbone whose
    tokenizer is not the policy's is refused, naming the key."""
    data = reference_format_file(tmp_path / "offline.jsonl")
    run_dir = tmp_path / "run"
    common = [*TRIM, "stages=[sft,collect,prm]", f"collect.from_file={data}", "prm.train.batch_size=8",
              "prm.train.micro_batch_size=8", "model.value.name_or_path=tiny"]
    run("oreo.train", f"run_dir={run_dir}", *common, "model.value.tiny.hidden_size=48",
        "model.value.tiny.num_layers=3")
    config = json.loads((run_dir / "checkpoints/prm/config.json").read_text())
    policy = json.loads((run_dir / "checkpoints/sft/config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (48, 3) and policy["hidden_size"] == 32
    run("oreo.evaluate", f"checkpoint={run_dir}/checkpoints/sft", f"value={run_dir}/checkpoints/prm",
        f"run_dir={tmp_path}", "evaluate.splits=[test]", *TRIM, "search=best_of_n", "search.n=2")
    assert json.loads((tmp_path / "search/best_of_n-n2-prm/metrics.json").read_text())["test"]["n"] > 0
    bad = run("oreo.train", f"run_dir={tmp_path / 'bad'}", *common, "model.value.tiny.vocabulary=household",
              check=False)
    assert bad.returncode != 0 and "model.value.name_or_path" in bad.stderr and "tokenizer" in bad.stderr
    assert not (tmp_path / "bad" / "checkpoints" / "sft").exists()   # it failed before SFT


def test_simpo_is_a_stage_on_dpos_pairs_without_a_reference(tmp_path):
    data = reference_format_file(tmp_path / "offline.jsonl")
    run_dir = tmp_path / "run"
    run("oreo.train", f"run_dir={run_dir}", *TRIM, "stages=[sft,collect,simpo]", f"collect.from_file={data}")
    accuracy = json.loads((run_dir / "metrics.json").read_text())
    assert set(accuracy) == {"sft", "simpo"}   # trained and evaluated
    details = json.loads((run_dir / "run.json").read_text())
    assert details["stages"]["simpo"]["steps"] == 40 // 4  # DPO's 40 pairs, batches of 4
    assert (run_dir / "checkpoints" / "simpo" / "config.json").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "reward_margin", "reward_accuracy", "chosen_reward"} <= set(
        next(r for r in rows if r["stage"] == "simpo"))


def test_dpo_and_kto_are_stages_on_the_same_buffer(tmp_path):
    data = reference_format_file(tmp_path / "offline.jsonl")
    run_dir = tmp_path / "run"
    proc = run("oreo.train", f"run_dir={run_dir}", *TRIM, "stages=[sft,collect,dpo,kto]", f"collect.from_file={data}")
    accuracy = json.loads((run_dir / "metrics.json").read_text())
    assert set(accuracy) == {"sft", "dpo", "kto"}
    details = json.loads((run_dir / "run.json").read_text())
    assert details["stages"]["dpo"]["steps"] == 40 // 4  # 20 problems × 1 right × 2 wrong pairs, batches of 4
    assert details["stages"]["kto"]["steps"] == 60 // 8
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for method, keys in (("dpo", {"loss", "reward_margin", "reward_accuracy", "chosen_reward"}),
                         ("kto", {"loss", "reference_point", "desirable_reward", "undesirable_reward"})):
        assert (run_dir / "checkpoints" / method / "config.json").exists()
        assert keys <= set(next(r for r in rows if r["stage"] == method))
        assert f"\n{method} " in proc.stdout  # its row in the final table
    # both anchored to the SFT model through one cached set of reference log-probs
    assert len(list((run_dir / "cache").glob("ref_logprobs-*.safetensors"))) == 1


def test_unknown_config_key_fails_clearly(tmp_path):
    proc = run("oreo.train", f"run_dir={tmp_path}", "oreo.betta=0.1", check=False)
    assert proc.returncode != 0
    assert "betta" in proc.stderr


def test_iterate_two_rounds_writes_table_and_plot(tmp_path):
    proc = run("oreo.iterate", f"run_dir={tmp_path}", "iterate.rounds=2", "iterate.reference=previous", *TRIM)
    details = json.loads((tmp_path / "run.json").read_text())
    assert [r["round"] for r in details["rounds"]] == [0, 1, 2]
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"sft", "oreo_round1", "oreo_round2"}
    assert (tmp_path / "plots" / "iterate.png").stat().st_size > 0
    assert (tmp_path / "buffer" / "round_001").exists()
    assert "round" in proc.stdout


def test_lora_and_gradient_checkpointing_run_end_to_end(tmp_path):
    run("oreo.train", f"run_dir={tmp_path}", *TRIM, "stages=[sft,collect,oreo]", "model.gradient_checkpointing=true",
        "model.lora.policy=true", "model.lora.value=true", "model.lora.r=4")
    for path in ["checkpoints/sft/lora_adapter/adapter_config.json", "checkpoints/oreo/policy/model.safetensors",
                 "checkpoints/oreo/policy/lora_adapter/adapter_config.json",
                 "checkpoints/oreo/value/value_head.safetensors"]:
        assert (tmp_path / path).exists(), path
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"sft", "oreo"}


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_torchrun_two_ranks_collects_and_evaluates_like_one_process(tmp_path):
    """Collection and evaluation are shared out between ranks and gathered: the same buffer, the same
    per-problem answers as one process; OREO trains with ZeRO-2 on both ranks; rank 0 alone writes."""
    args = [*TRIM, "stages=[collect,oreo]", "engine.backend=deepspeed", "engine.zero_stage=2",
            "collect.batch_size=16", "evaluate.batch_size=8"]  # several blocks per rank
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    single, multi = tmp_path / "single", tmp_path / "multi"
    run("oreo.train", f"run_dir={single}", *args, "stages=[collect]")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "oreo.train", f"run_dir={multi}", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    from oreo.buffer import Buffer

    assert Buffer(multi / "buffer").load() == Buffer(single / "buffer").load()
    for split in ("test", "heldout"):
        name = f"sft-{split}.jsonl"
        assert (multi / "eval" / name).read_text() == (single / "eval" / name).read_text()
    accuracy = json.loads((multi / "metrics.json").read_text())
    assert set(accuracy) == {"sft", "oreo"}
    assert (multi / "checkpoints" / "oreo" / "value" / "value_head.safetensors").exists()
    assert not list((multi / "buffer").glob("*.partial*"))
    assert proc.stdout.count("results:") == 1  # one table, printed by rank 0


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_with_optimizer_offload_trains(tmp_path):
    env_cpu = {} if torch_cuda() else {"DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "oreo.train", f"run_dir={tmp_path}", *TRIM, "stages=[sft]",
                           "engine.backend=deepspeed", "engine.zero_stage=1", "engine.offload_optimizer=true"],
                          cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **env_cpu},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["stage"] == "sft"]
    assert losses and all(loss == loss for loss in losses)  # logged, finite
    assert (tmp_path / "checkpoints" / "sft" / "model.safetensors").exists()


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_imported_reference_data_balanced_selection_and_sampled_evaluation(tmp_path):
    """collect.from_file trains on the reference's released format instead of sampling; balanced_k
    selects the training data; evaluate.sampled adds pass@k / maj@k."""
    data = reference_format_file(tmp_path / "offline.jsonl")
    run_dir = tmp_path / "run"
    run("oreo.train", f"run_dir={run_dir}", *TRIM, "stages=[sft,collect,oreo]", f"collect.from_file={data}",
        "collect.balanced_k=1", "evaluate.sampled.n=2", "evaluate.sampled.ks=[1,2]", "oreo.train.batch_size=8",
        "oreo.train.micro_batch_size=8")
    from oreo.buffer import Buffer

    assert len(Buffer(run_dir / "buffer").load()) == 60
    details = json.loads((run_dir / "run.json").read_text())
    assert details["stages"]["oreo"]["encode"]["seen"] == 40  # 1 right + 1 wrong kept per problem
    assert set(details["sampled"]["oreo"]["test"]) == {"pass@1", "maj@1", "pass@2", "maj@2"}
    assert (run_dir / "eval" / "oreo-test-samples.jsonl").exists()


HOUSEHOLD_TRIM = ["+experiment=household", "task.n_train=16", "task.n_test=6", "task.max_steps=6",
                  "model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2",
                  "model.tiny.intermediate_size=64", "sft.train.epochs=1", "sft.train.batch_size=8",
                  "sft.train.micro_batch_size=8", "collect.n=2", "collect.max_problems=12", "rft.train.batch_size=2",
                  "rft.train.micro_batch_size=2", "oreo.train.batch_size=8", "oreo.train.micro_batch_size=8",
                  "evaluate.max_new_tokens=12", "collect.max_new_tokens=12", "threads=1"]


def test_household_agents_run_end_to_end_and_search_with_best_of_k(tmp_path):
    """SFT on expert episodes → collect episodes → RFT/OREO → greedy success; then best-of-K actions."""
    proc = run("oreo.train", f"run_dir={tmp_path}", *HOUSEHOLD_TRIM)
    success = json.loads((tmp_path / "metrics.json").read_text())
    details = json.loads((tmp_path / "run.json").read_text())
    assert {"sft", "oreo"} <= set(success) and all(set(row) == {"test"} for row in success.values())
    assert details["buffer"]["n"] == 12 * 2 and details["buffer"]["n_problems"] == 12  # the first 12 of 16 games
    assert set(details["episodes"]["sft"]["test"]) >= {"success", "mean_turns", "by_kind", "invalid"}
    rows = [json.loads(line) for line in (tmp_path / "eval" / "oreo-test.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["turns"] <= 6 for r in rows)
    assert "method" in proc.stdout
    run("oreo.evaluate", f"run_dir={tmp_path}", *HOUSEHOLD_TRIM, "search=best_of_n", "search.n=2")
    metrics = json.loads((tmp_path / "search" / "best_of_n-n2" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["success"] <= 1.0 and metrics["test"]["n"] == 6
    bad = run("oreo.evaluate", f"run_dir={tmp_path}", *HOUSEHOLD_TRIM, "search=beam", check=False)
    assert bad.returncode != 0 and "best_of_n" in bad.stderr


def test_rest_mcts_runs_its_rounds_and_resumes(tmp_path):
    """python -m oreo.rest_mcts: SFT → samples → PRM → per round MCTS* trees → SFT on their correct
    solutions → PRM on their targets → evaluation; a rerun trains and searches nothing again."""
    data = reference_format_file(tmp_path / "offline.jsonl")
    run_dir = tmp_path / "run"
    args = [f"run_dir={run_dir}", "+experiment=rest_mcts_smoke", f"collect.from_file={data}"]
    proc = run("oreo.rest_mcts", *args)
    details = json.loads((run_dir / "run.json").read_text())
    assert [r["method"] for r in details["rounds"]] == ["sft", "rest_round1"]
    trees = Buffer(run_dir / "buffer").load([1])
    assert trees and all(r.tree_id and r.tree_id.startswith("r1-") for r in trees)
    assert len({r.tree_id for r in trees}) == 4 and details["stages"]["collect_1"]["nodes"] > 0
    assert (run_dir / "checkpoints/prm_round0/value_head.safetensors").exists()
    for stage in ("rft_round1", "prm_round1"):  # trained, or skipped with the reason (a barely trained policy)
        assert (run_dir / "checkpoints" / stage).exists() or stage in details.get("skipped", {})
    assert (run_dir / "plots/rest_mcts.png").exists() and "round" in proc.stdout
    before = (run_dir / "metrics.jsonl").read_text()
    run("oreo.rest_mcts", *args)
    assert (run_dir / "metrics.jsonl").read_text() == before
    # test time: MCTS* with the PRM of the last round
    prm = next(p for p in (run_dir / "checkpoints/prm_round1", run_dir / "checkpoints/prm_round0") if p.exists())
    run("oreo.evaluate", f"checkpoint={run_dir}/checkpoints/sft", f"value={prm}", f"run_dir={tmp_path}",
        "+experiment=rest_mcts_smoke", "evaluate.splits=[test]", "search=mcts")
    metrics = json.loads((tmp_path / f"search/mcts-i2-b2-best_value-t0.7-{prm.name}/metrics.json").read_text())
    assert metrics["test"]["n"] == 16 and metrics["test"]["mean_tokens"] > 0


def test_cpl_runs_both_rounds_and_resumes(tmp_path):
    """python -m oreo.cpl: plan-format SFT → per round a plan search (style alphazero) into the buffer →
    Step-APO (round 1 also Step-DPO and instance-DPO) → the value on the trees' Q → round 2's SFT and
    Step-APO; every policy evaluated; a rerun trains and searches nothing again."""
    run_dir = tmp_path / "run"
    args = [f"run_dir={run_dir}", "+experiment=cpl_smoke"]
    proc = run("oreo.cpl", *args)
    details = json.loads((run_dir / "run.json").read_text())
    assert [r["method"] for r in details["rounds"]] == ["sft", "step_dpo_round1", "instance_dpo_round1",
                                                       "step_apo_round1", "sft_round2", "step_apo_round2"]
    for k in (1, 2):
        trees = Buffer(run_dir / "buffer").load([k])
        assert len({r.tree_id for r in trees}) == 4 and all(r.tree_id.startswith(f"r{k}-") for r in trees)
        assert all(r.meta["search"] == "mcts" for r in trees)
    for stage in ("step_dpo_round1", "instance_dpo_round1", "step_apo_round1", "value_round1", "step_apo_round2"):
        assert (run_dir / "checkpoints" / stage).exists() or stage in details.get("skipped", {})
    assert (run_dir / "checkpoints/sft_round2").exists()
    assert (run_dir / "plots/cpl.png").exists() and "step_apo_round2" in proc.stdout
    before = (run_dir / "metrics.jsonl").read_text()
    run("oreo.cpl", *args)
    assert (run_dir / "metrics.jsonl").read_text() == before
    # round 1 may search with a given value model instead of the untrained head: here one on the SFT model
    value = tmp_path / "value"
    ValueModel.from_policy(load_policy(str(run_dir / "checkpoints/sft"))[0], output="tanh").save_pretrained(value)
    other = tmp_path / "with_value"
    run("oreo.cpl", f"run_dir={other}", "+experiment=cpl_smoke", "cpl.rounds=1", "cpl.baselines=false",
        f"cpl.value={value}")
    assert {r.meta["value"] for r in Buffer(other / "buffer").load([1])} == {str(value)}


def test_cpl_needs_the_plan_format(tmp_path):
    proc = run("oreo.cpl", f"run_dir={tmp_path}", "+experiment=smoke", check=False)
    assert proc.returncode != 0 and "task.format" in proc.stderr
