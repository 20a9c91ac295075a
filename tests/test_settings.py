"""Bad settings fail when the config is built, naming the key and the allowed range, before any stage
runs; inputs named by the config are checked first too (the probes of the issue "Trustworthy runs")."""
import json
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from oreo.buffer import RecordError
from oreo.config import ConfigError
from oreo.pipeline import Run
from oreo.run_config import compose
from oreo.run_record import merge
from oreo.trainers.common import TrainConfig
from oreo.trainers.oreo import OREOConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


def run_with(tmp_path, *overrides):
    return Run(compose([f"run_dir={tmp_path / 'run'}", "+experiment=smoke", *overrides]))


@pytest.mark.parametrize("override,key,says", [
    ("sft.train.batch_size=-16", "sft.train.batch_size", ">= 1"),
    ("oreo.train.micro_batch_size=-8", "oreo.train.micro_batch_size", ">= 1"),
    ("rft.train.epochs=0", "rft.train.epochs", "> 0"),
    ("oreo.beta=0", "oreo.beta", "> 0"),
    ("dpo.beta=-0.1", "dpo.beta", "> 0"),
    ("kto.desirable_weight=0", "kto.desirable_weight", "> 0"),
    ("collect.n=0", "collect.n", ">= 1"),
    ("collect.temperature=-1", "collect.temperature", ">= 0"),
    ("evaluate.sampled.temperature=-0.5", "evaluate.sampled.temperature", ">= 0"),
    ("oreo.train.lr=0", "oreo.train.lr", "> 0"),
    ("oreo.train.value_lr=-1e-3", "oreo.train.value_lr", "> 0"),
    ("sft.train.lr=abc", "sft.train.lr", "could not be converted to Float"),   # Hydra, on composing
    ("collect.n=four", "collect.n", "could not be converted to Integer"),
    ("oreo.granularity=sentence", "oreo.granularity", "one of token, step, turn"),
    ("engine.zero_stage=4", "engine.zero_stage", "<= 3"),
    ("engine.backend=jax", "engine.backend", "one of torch, deepspeed"),
    ("dpo.label_smoothing=0.7", "dpo.label_smoothing", "<= 0.5"),
    ("+dpo.betta=0.1", "dpo.betta", "unknown key"),
    ("sft.n_per_problem=0", "sft.n_per_problem", ">= 1"),
    ("threads=0", "threads", ">= 1"),
    ("iterate.rounds=0", "iterate.rounds", ">= 1"),
    ("iterate.reference=base", "iterate.reference", "one of sft, previous"),
    ("sampler.backend=tgi", "sampler.backend", "one of hf, vllm, auto"),
    ("sampler.gpu_memory_utilization=1.5", "sampler.gpu_memory_utilization", "<= 1.0"),
    ("wandb.mode=loud", "wandb.mode", "one of auto, online, offline, disabled"),
    ("evaluate.batch_size=0", "evaluate.batch_size", ">= 1"),
    ("collect.balanced_k=0", "collect.balanced_k", ">= 1"),
    ("task.n_train=-5", "task.n_train", ">= 1"),
])
def test_a_bad_setting_fails_before_any_work_naming_the_key(tmp_path, override, key, says):
    with pytest.raises((ConfigError, ConfigCompositionException)) as e:
        run_with(tmp_path, override)
    named = e.value.key == key if isinstance(e.value, ConfigError) else f"full_key: {key}" in str(e.value.__cause__)
    assert named and says in str(e.value.__cause__ or e.value), str(e.value)
    assert not (tmp_path / "run").exists()  # nothing was written, let alone trained


def test_inputs_named_by_the_config_are_checked_first(tmp_path):
    with pytest.raises(ConfigError, match="collect.from_file: .*missing.jsonl: no such file"):
        run_with(tmp_path, f"collect.from_file={tmp_path / 'missing.jsonl'}")
    with pytest.raises(ConfigError, match="task.data_dir: .*nowhere: no such file or folder"):
        Run(compose([f"run_dir={tmp_path / 'run'}", "task=gsm8k", f"task.data_dir={tmp_path / 'nowhere'}"]))


def test_the_dataclasses_check_themselves():
    with pytest.raises(ConfigError, match="batch_size: must be >= 1, got -16"):
        TrainConfig(batch_size=-16)
    with pytest.raises(ConfigError, match="betas"):
        TrainConfig(betas=(0.9, 1.5))
    with pytest.raises(ConfigError, match="clip_logratio: must be > 0"):
        OREOConfig(clip_logratio=0.0)
    assert OREOConfig(clip_logratio=None).clip_logratio is None
    assert TrainConfig(lr=1).lr == 1  # an int is a number


def test_the_shipped_configs_pass(tmp_path):
    run_with(tmp_path)  # the default (with the smoke experiment) builds


def test_a_damaged_run_json_names_the_file_and_what_to_do(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text('{"accuracy": {"sft": ')  # cut by a full disk
    with pytest.raises(RuntimeError, match=r"run\.json: damaged.*delete it"):
        run_with(tmp_path)


def write_import(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("stages", ["[sft]", "[sft,collect,oreo]", "[collect]"])
def test_a_bad_import_fails_before_the_first_stage_whatever_the_stages(tmp_path, stages):
    bad = write_import(tmp_path / "data.jsonl", [{"prompt": "q", "response": "a", "reward": 1},
                                                 {"prompt": "q", "response": "a", "reward": "yes"}])
    with pytest.raises(RecordError, match=r"data\.jsonl:2: field 'reward'"):
        run_with(tmp_path, f"collect.from_file={bad}", f"stages={stages}")
    assert not (tmp_path / "run").exists()   # nothing trained, nothing written
    empty = write_import(tmp_path / "empty.jsonl", [{"prompt": "", "response": "a", "reward": 1}])
    with pytest.raises(RecordError, match=r"empty\.jsonl:1: field 'prompt': empty"):
        run_with(tmp_path, f"collect.from_file={empty}", f"stages={stages}")


def test_out_of_range_imported_rewards_are_refused_or_accepted_and_reported(tmp_path):
    rows = [{"prompt": f"{i} +1\n", "response": f"{i}+1={i + 1}\n#### {i + 1}", "reward": 1} for i in range(40)]
    rows[3]["reward"] = -1e6
    path = write_import(tmp_path / "data.jsonl", rows)
    with pytest.raises(RecordError, match=r"data\.jsonl:4: field 'reward': outside the task's range \[0, 1\]"):
        run_with(tmp_path, f"collect.from_file={path}")
    run = run_with(tmp_path, f"collect.from_file={path}", "collect.accept_out_of_range_rewards=true",
                   "stages=[collect]")
    run.collect(Path("unused"))
    assert run.record.stages["collect_0"]["lines with reward outside the task's range"] == [4]
    assert sorted(r.reward for r in run.buffer.load())[0] == -1e6


def test_agent_tasks_refuse_an_import_when_the_run_is_built(tmp_path):
    path = write_import(tmp_path / "data.jsonl", [{"prompt": "q", "response": "a", "reward": 1}])
    with pytest.raises(ConfigError, match=r"collect\.from_file: .*household plays multi-turn episodes"):
        Run(compose([f"run_dir={tmp_path / 'run'}", "+experiment=household", f"collect.from_file={path}"]))
    assert not (tmp_path / "run").exists()


def test_a_process_that_loses_a_race_keeps_the_records_of_finished_stages(tmp_path):
    first, second = run_with(tmp_path), run_with(tmp_path)   # both read run.json before either wrote
    first.record.record_stage("sft", {"steps": 3})
    first.record.record_accuracy("sft", {"test": 0.5})
    first._write_record()
    second.record.record_stage("oreo", {"steps": 6})
    second.record.record_accuracy("oreo", {"test": 0.7})
    second._write_record()   # the stale writer
    on_disk = json.loads((tmp_path / "run" / "run.json").read_text())
    assert on_disk["stages"] == {"sft": {"steps": 3}, "oreo": {"steps": 6}}
    assert on_disk["accuracy"] == {"sft": {"test": 0.5}, "oreo": {"test": 0.7}}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == on_disk["accuracy"]


def test_merge_keeps_what_the_disk_has_but_not_what_was_removed_on_purpose():
    disk = {"stages": {"sft": 1, "oreo": 2}, "accuracy": {"sft": {"test": 0.1}}, "buffer": {"n": 4}}
    mine = {"stages": {"sft": 9}, "accuracy": {}}
    merged = merge(disk, mine, {("stages", "oreo"), ("buffer", None)})
    assert merged == {"stages": {"sft": 9}, "accuracy": {"sft": {"test": 0.1}}}


@pytest.mark.parametrize("overrides,key,says", [
    (["task=household", "task.max_steps=0"], "task.max_steps", ">= 1"),
    (["task=household", "task.min_receptacles=6"], "task.min_receptacles", "<= max_receptacles"),
    (["task=household", "task.teacher_skip_rate=1.5"], "task.teacher_skip_rate", "<= 1.0"),
    (["task=household", "task.kinds=[fly]"], "task.kinds", "unknown ['fly']"),
    (["task=gsm8k", "task.grade_timeout=0"], "task.grade_timeout", "> 0"),
    (["task=alfworld", "task.max_steps=0"], "task.max_steps", ">= 1"),
    (["task.min_ops=5"], "task.min_ops", "<= max_ops"),
    (["task.max_value=1"], "task.max_value", ">= 2"),
    (["model.tiny.num_heads=3"], "model.tiny.hidden_size", "multiple of num_heads"),
    (["model.tiny.num_layers=0"], "model.tiny.num_layers", ">= 1"),
    (["model.lora.r=0"], "model.lora.r", ">= 1"),
    (["model.dtype=float64"], "model.dtype", "one of float32, bfloat16, float16"),
    (["search.width=0"], "search.width", ">= 1"),
])
def test_every_task_and_model_setting_is_checked(overrides, key, says):
    with pytest.raises(ConfigError) as e:
        compose(overrides)
    assert e.value.key == key and says in str(e.value), str(e.value)
