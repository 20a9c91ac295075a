"""Every shipped config composes into the typed ``RunConfig`` (a typo in conf/ fails here, not mid-run),
and each default lives in exactly one place: the dataclasses, not the YAML."""
import dataclasses
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from oreo.config import ConfigError
from oreo.run_config import RunConfig, as_dict, compose, to_yaml
from oreo.tasks import TASKS, make_task, task_config_class
from oreo.trainers import METHODS
from oreo.trainers.oreo import OREOConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_config_composes_and_builds(experiment):
    cfg = compose([f"+experiment={experiment}"] if experiment else [])
    assert isinstance(cfg, RunConfig)
    for name in METHODS:  # every method has a typed section with its training settings
        assert cfg.method(name).train.seed == cfg.seed
    task_cfg = cfg.task
    if getattr(task_cfg, "data_dir", "") is None:  # the hub: read the local copy of the same data instead
        local = CONF.parents[1] / "shared" / "data" / task_cfg.name
        if not local.exists():
            pytest.skip(f"{local} is not there")
        task_cfg = dataclasses.replace(task_cfg, data_dir=str(local))
    if task_cfg.name == "alfworld" and not Path(task_cfg.data_dir).exists():
        pytest.skip(f"ALFWorld data {task_cfg.data_dir} is not there")
    task = make_task(task_cfg)
    assert task.problems("train")


def test_the_default_run_is_the_dataclasses_defaults():
    """conf/config.yaml adds no value of its own: composing it gives ``RunConfig()`` (seeds linked)."""
    assert as_dict(compose()) == as_dict(RunConfig())
    assert compose(["seed=3"]).oreo.train.seed == 3 and compose(["seed=3"]).task.seed == 3


def test_no_default_is_written_twice():
    """The YAML files only pick presets: no section of conf/config.yaml, and no key of a model or search
    preset, repeats a dataclass default (OREOConfig.beta once disagreed with conf/config.yaml)."""
    top = OmegaConf.load(CONF / "config.yaml")
    assert set(top) <= {"defaults", "hydra"}, sorted(top)
    assert not (CONF / "task").exists()  # the tasks' defaults are their config dataclasses
    defaults = {"model": as_dict(RunConfig().model), "search": as_dict(RunConfig().search)}
    for group, base in defaults.items():
        for path in (CONF / group).glob("*.yaml"):
            preset = OmegaConf.to_container(OmegaConf.load(path))
            repeated = [k for k, v in preset.items() if not isinstance(v, dict) and base.get(k) == v
                        and not (group == "model" and k == "name_or_path")
                        and not (group == "search" and k == "strategy")]
            assert not repeated, f"{path}: {repeated} repeat the defaults"
    assert OREOConfig().beta == RunConfig().oreo.beta


def test_the_whole_config_prints_and_reads_back():
    cfg = compose(["+experiment=household"])
    text = to_yaml(cfg)
    for key in ("oreo:", "beta:", "value_lr:", "task:", "max_receptacles:", "lora:", "search:"):
        assert key in text
    from oreo.run_config import run_config

    assert run_config(OmegaConf.to_container(OmegaConf.create(text))) == cfg


def test_every_task_is_a_group_option():
    for name in TASKS:
        cfg = compose([f"task={name}"])
        assert isinstance(cfg.task, task_config_class(name)) and cfg.task.name == name


def test_engine_section_reaches_every_stage():
    cfg = compose(["engine.backend=deepspeed", "engine.zero_stage=3", "engine.offload_optimizer=true"])
    assert (cfg.engine.backend, cfg.engine.zero_stage, cfg.engine.offload_optimizer) == ("deepspeed", 3, True)
    for name in METHODS:  # the engine is the run's, not a per-method setting
        assert not hasattr(cfg.method(name).train, "zero_stage")


def test_step_experiment_sets_step_granularity():
    assert compose(["+experiment=arithmetic_step"]).oreo.granularity == "step"


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="oreo.policy_loss"):
        compose(["oreo.policy_loss=dpo"])
    with pytest.raises(ConfigCompositionException, match="betta"):
        compose(["dpo.betta=0.2"])
    with pytest.raises(ConfigError, match="dpo.betta: unknown key"):
        compose(["+dpo.betta=0.2"])
    with pytest.raises(ConfigCompositionException, match="n_trian"):
        compose(["task.n_trian=5"])
    with pytest.raises(ConfigError, match="task.n_trian: unknown key"):
        compose(["+task.n_trian=5"])
    with pytest.raises(ConfigCompositionException, match="model.lora.rank"):
        compose(["model.lora.rank=5"])


@pytest.mark.parametrize("search", sorted(p.stem for p in (CONF / "search").glob("*.yaml")))
def test_search_configs_build(search):
    assert compose([f"search={search}"]).search.strategy == search


def test_cpl_refuses_a_round_one_value_that_is_not_a_value_model(tmp_path):
    from oreo.cpl import check_cpl

    with pytest.raises(ConfigError, match="cpl.value"):
        check_cpl(compose(["+experiment=cpl_smoke", f"cpl.value={tmp_path}"]))


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e.startswith("cpl")])
def test_cpl_experiments_pass_cpls_checks(experiment):
    from oreo.cpl import check_cpl

    cfg = compose([f"+experiment={experiment}"])
    check_cpl(cfg)
    assert (cfg.model.value.output, cfg.model.value.head_init) == ("tanh", "random")   # the paper's value head
    if experiment == "cpl_household":   # the household experiment's settings, CPL's search over turns
        assert cfg.task.name == "household" and cfg.sft.max_len == 1024 and cfg.mcts.style == "alphazero"
