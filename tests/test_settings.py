"""Bad settings fail when the config is built, naming the key and the allowed range, before any stage
runs; inputs named by the config are checked first too (the probes of the issue "Trustworthy runs")."""
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from oreo.config import ConfigError
from oreo.pipeline import Run
from oreo.run_config import compose
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
