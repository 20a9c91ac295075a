"""Every shipped config composes and builds its dataclasses (a typo in conf/ fails here, not mid-run)."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from oreo.pipeline import lora_config, method_config, train_config
from oreo.tasks import make_task
from oreo.trainers import METHODS

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_config_composes_and_builds(experiment):
    overrides = [f"+experiment={experiment}"] if experiment else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    for name in METHODS:  # every method has a section that builds its config and training settings
        method_config(name, cfg[name])
        train_config(cfg[name].train, cfg.engine)
    lora_config(cfg.model)
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    if task_cfg.get("data_dir", "") is None:  # the hub: read the local copy of the same data instead
        local = CONF.parents[1] / "shared" / "data" / task_cfg["name"]
        if not local.exists():
            pytest.skip(f"{local} is not there")
        task_cfg["data_dir"] = str(local)
    if task_cfg["name"] == "alfworld" and not Path(task_cfg["data_dir"]).exists():
        pytest.skip(f"ALFWorld data {task_cfg['data_dir']} is not there")
    task = make_task(task_cfg)
    assert task.problems("train")


def test_engine_section_reaches_every_stage():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["engine.backend=deepspeed", "engine.zero_stage=3",
                                                       "engine.offload_optimizer=true"])
    for name in METHODS:
        t = train_config(cfg[name].train, cfg.engine)
        assert (t.engine, t.zero_stage, t.offload_optimizer, t.bf16) == ("deepspeed", 3, True, False)


def test_step_experiment_sets_step_granularity():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=arithmetic_step"])
    assert method_config("oreo", cfg.oreo).granularity == "step"


def test_bad_values_name_the_key():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["oreo.policy_loss=dpo"])
    with pytest.raises(ValueError, match="policy_loss"):
        method_config("oreo", cfg.oreo)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+dpo.betta=0.2"])
    with pytest.raises(ValueError, match="betta"):
        method_config("dpo", cfg.dpo)


@pytest.mark.parametrize("search", sorted(p.stem for p in (CONF / "search").glob("*.yaml")))
def test_search_configs_build(search):
    from oreo.search.strategies import SearchConfig

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"search={search}"])
    assert SearchConfig(**OmegaConf.to_container(cfg.search)).strategy == search
