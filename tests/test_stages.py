"""A rerun never mixes settings silently: each stage records what shaped its output, a rerun with other
settings for a started stage refuses naming the keys, recompute=[...] redoes a stage and what depends
on it, resume=false never mixes runs, and imports get ids unique per round."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oreo.buffer import Buffer
from oreo.pipeline import Run
from oreo.run_config import compose
from oreo.stages import StageSettingsChanged, dependents, differences, settings_of

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_run(run_dir, *overrides) -> Run:
    return Run(compose([f"run_dir={run_dir}", "+experiment=smoke", *overrides]))


def train(run_dir, *overrides, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "oreo.train", f"run_dir={run_dir}", "+experiment=smoke", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_settings_leave_out_what_does_not_change_the_output():
    cfg = {"seed": 1, "task": {"name": "t"}, "model": {"name_or_path": "m", "gradient_checkpointing": True},
           "oreo": {"beta": 0.1, "chunk_size": 64, "train": {"lr": 1e-4, "micro_batch_size": 8, "save_every": 5}},
           "collect": {"n": 4, "balanced_k": None, "batch_size": 512}, "engine": {"bf16": False, "zero_stage": 2}}
    assert settings_of(cfg, "oreo") == {"seed": 1, "task.name": "t", "model.name_or_path": "m", "model.dtype": None,
                                        "model.tiny": None, "model.lora": None, "model.trust_remote_code": None,
                                        "oreo.beta": 0.1, "oreo.train.lr": 1e-4, "collect.balanced_k": None,
                                        "engine.bf16": False}
    assert settings_of(cfg, "collect_0")["collect.n"] == 4 and "collect.batch_size" not in settings_of(cfg, "collect_0")
    # c: a setting added since the stage ran (an upgrade), not a change
    assert differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["b: 2 → 3"]


def test_dependents():
    stages = ["sft", "collect_0", "rft", "oreo", "dpo", "evaluate"]
    assert dependents("sft", stages) == set(stages)
    assert dependents("collect", stages) == {"collect_0", "rft", "oreo", "dpo"}
    assert dependents("oreo", stages) == {"oreo"}
    assert dependents("oreo", ["oreo_round1", "oreo_round2", "collect_1"]) == {"oreo_round1", "oreo_round2"}
    # CPL: a round's SFT learns from that round's plan search
    cpl = ["sft", "collect_1", "step_apo_round1", "value_round1", "collect_2", "sft_round2", "step_apo_round2"]
    assert dependents("collect_2", cpl) == set(cpl) - {"sft"}


def test_cpl_stages_are_shaped_by_the_sections_they_read():
    cfg = {"step_apo": {"alpha": 1.0}, "dpo": {"beta": 0.1}, "prm": {"targets": "q"}, "cpl": {"max_problems": 9}}
    assert settings_of(cfg, "step_dpo_round1")["step_apo.alpha"] == 1.0
    assert settings_of(cfg, "instance_dpo_round1")["dpo.beta"] == 0.1
    assert settings_of(cfg, "value_round1")["prm.targets"] == "q"
    assert settings_of(cfg, "collect_1")["cpl.max_problems"] == 9


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stages") / "run"
    train(run_dir, "stages=[sft,collect]")
    return run_dir


def test_a_changed_setting_of_a_finished_stage_refuses_naming_the_keys(collected, tmp_path):
    before = {name: (collected / name).read_bytes() for name in ("config.yaml", "run.json")}
    with pytest.raises(StageSettingsChanged) as e:
        compose_run(collected, "stages=[sft,collect]", "collect.n=3", "collect.temperature=0.7")
    assert e.value.stage == "collect_0"
    assert e.value.changes == ["collect.n: 2 → 3", "collect.temperature: 1.0 → 0.7"]
    assert "use a new run_dir" in str(e.value) and "recompute=[collect]" in str(e.value)
    with pytest.raises(StageSettingsChanged, match="sft.train.lr"):
        compose_run(collected, "sft.train.lr=1e-3")
    # the run directory still describes the run that happened
    assert {name: (collected / name).read_bytes() for name in before} == before
    compose_run(collected, "sft.train.save_every=7", "collect.batch_size=64")  # how, not what: accepted


def test_recompute_redoes_the_stage_and_what_depends_on_it(collected, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(collected, run_dir)
    sft_weights = (run_dir / "checkpoints" / "sft" / "model.safetensors").read_bytes()
    proc = train(run_dir, "stages=[sft,collect]", "collect.n=3", "recompute=[collect]")
    assert "removed the outputs of 'collect_0'" in proc.stdout
    assert len(Buffer(run_dir / "buffer").load()) == 48 * 3
    assert (run_dir / "checkpoints" / "sft" / "model.safetensors").read_bytes() == sft_weights  # kept
    settings = json.loads((run_dir / "run.json").read_text())["settings"]
    assert settings["collect_0"]["collect.n"] == 3
    bad = train(run_dir, "recompute=[nonsense]", check=False)
    assert bad.returncode != 0 and "recompute" in bad.stderr and "not a stage" in bad.stderr


def test_resume_false_on_an_earlier_run_refuses(collected):
    with pytest.raises(FileExistsError, match="resume=false would mix"):
        compose_run(collected, "resume=false")


def test_imports_in_several_rounds_get_ids_unique_per_round(tmp_path):
    data = tmp_path / "offline.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} +1\n", "response": f"#### {i + 1}", "reward": 1}) + "\n"
                            for i in range(4)))
    run = compose_run(tmp_path / "run", f"collect.from_file={data}")
    run.collect(Path("unused"), round=0)
    run.collect(Path("unused"), round=1)
    ids = [r.id for r in Buffer(tmp_path / "run" / "buffer").load()]
    assert len(ids) == 8 and len(set(ids)) == 8
