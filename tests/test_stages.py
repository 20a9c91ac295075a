"""A rerun never mixes settings silently: each stage records what shaped its output and its seed offset, a rerun
with other settings for a started stage refuses naming the keys, recompute=[...] redoes a stage and what depends
on it, resume=false never mixes runs, and imports get ids unique per round. A stage is a StageId whose name is the
one the run directory uses."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oreo.buffer import Buffer
from oreo.pipeline import STAGES, Run
from oreo.run_config import compose
from oreo.stages import (
    COMMON,
    KINDS,
    StageId,
    StageSettingsChanged,
    dependents,
    differences,
    recorded_settings,
    seed_offset,
    settings_of,
    shaped_by,
)
from oreo.trainers import METHODS

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


# every name pattern a run directory holds: the pipeline's stages, collection rounds, iterate's, rest_mcts's and
# CPL's rounds, CPL's stages named after what they train, experiments/cpl_pairs.py's variants
NAMES = {
    "sft": StageId("sft"), "collect": StageId("collect"), "rft": StageId("rft"), "oreo": StageId("oreo"),
    "dpo": StageId("dpo"), "kto": StageId("kto"), "prm": StageId("prm"), "step_apo": StageId("step_apo"),
    "simpo": StageId("simpo"),
    "evaluate": StageId("evaluate"),
    "collect_0": StageId("collect", 0), "collect_2": StageId("collect", 2), "collect_12": StageId("collect", 12),
    "oreo_round3": StageId("oreo", 3), "prm_round0": StageId("prm", 0), "rft_round1": StageId("rft", 1),
    "sft_round2": StageId("sft", 2), "step_apo_round1": StageId("step_apo", 1),
    "step_dpo_round1": StageId("step_dpo", 1), "instance_dpo_round1": StageId("instance_dpo", 1),
    "value_round1": StageId("value", 1),
    "step_apo_round1_node_any": StageId("step_apo", 1, "node_any"),
    "step_apo_round1_step_dpo_r2": StageId("step_apo", 1, "step_dpo_r2"),
    "step_apo_round1_node_any_beta0.1": StageId("step_apo", 1, "node_any_beta0.1"),
}


def test_a_stage_name_reads_back_as_the_same_stage():
    for name, stage in NAMES.items():
        assert StageId.parse(name) == stage and stage.name == name and str(stage) == name
    # a name of no known pattern is a kind of its own, and reads back as itself too
    for name in ("collect_round1", "collect_01", "oreo_round01", "x_round1_", "nonsense"):
        assert StageId.parse(name) == StageId(name) and StageId(name).name == name
    assert {StageId.parse("oreo_round1"), StageId("oreo", 1)} == {StageId("oreo", 1)}   # a value: equal, hashable


@pytest.mark.parametrize("fields", [("oreo_round1",), ("collect_2",), ("a_round1", 2), ("oreo", None, "x"),
                                    ("collect", 1, "x"), ("oreo", -1), ("oreo", "1"), ("oreo", 1, ""), ("",)])
def test_a_stage_whose_name_would_not_read_back_is_refused(fields):
    with pytest.raises(ValueError, match="reads back"):
        StageId(*fields)


def test_each_kind_declares_what_shapes_its_stages():
    own = {name: shaped_by(name)[len(COMMON):] for name in NAMES}
    trained = ("collect.balanced_k", "engine.bf16")
    assert own["sft"] == own["sft_round2"] == ("sft",)
    assert own["collect_0"] == ("collect", "sampler.backend")
    assert own["collect_2"] == ("collect", "sampler.backend", "iterate", "mcts", "rest.max_problems",
                                "cpl.max_problems")
    assert own["oreo"] == ("oreo", *trained) and own["oreo_round3"] == ("oreo", *trained, "iterate")
    assert own["prm"] == own["prm_round0"] == own["value_round1"] == ("prm", *trained)
    assert own["step_apo_round1"] == own["step_dpo_round1"] == own["step_apo_round1_node_any"] == ("step_apo",
                                                                                                    *trained)
    assert own["instance_dpo_round1"] == ("dpo", *trained) and own["rft_round1"] == ("rft", *trained)
    assert own["evaluate"] == ("evaluate.max_new_tokens", "evaluate.sampled", "sampler.backend")
    assert {KINDS[name].method for name in METHODS} == set(METHODS)   # every method has its kind of stage


def test_seed_offsets_are_declared_by_each_kind_as_they_were_numbered():
    # the offsets each stage had when they came from its method's place in the pipeline's stages
    assert {name: METHODS[name].seed for name in METHODS} == {s: STAGES.index(s) + 1 for s in STAGES if s != "collect"}
    assert len({m.seed for m in METHODS.values()} | {seed_offset("collect_0")}) == len(METHODS) + 1
    offsets = {name: seed_offset(stage) for name, stage in NAMES.items()}
    assert offsets == {"sft": 1, "collect": 2, "rft": 3, "oreo": 4, "dpo": 5, "kto": 6, "prm": 7, "step_apo": 8,
                       "simpo": 9, "evaluate": None, "collect_0": 2, "collect_2": 202, "collect_12": 1202,
                       "oreo_round3": 4,
                       "prm_round0": 7, "rft_round1": 3, "sft_round2": 1, "step_apo_round1": 8, "step_dpo_round1": 8,
                       "instance_dpo_round1": 5, "value_round1": 7, "step_apo_round1_node_any": 8,
                       "step_apo_round1_step_dpo_r2": 8, "step_apo_round1_node_any_beta0.1": 8}
    cfg = {"seed": 3, "oreo": {"beta": 0.1}}
    assert recorded_settings(cfg, "oreo_round2") == {**settings_of(cfg, "oreo_round2"), "seed_offset": 4}
    assert recorded_settings(cfg, "evaluate") == settings_of(cfg, "evaluate")   # it seeds nothing itself


def test_a_variant_is_redone_with_its_kind_and_not_with_its_round():
    stages = ["step_apo_round1", "step_apo_round1_node_any", "step_dpo_round1", "step_apo_round2"]
    assert dependents("step_apo", stages) == {"step_apo_round1", "step_apo_round1_node_any", "step_apo_round2"}
    assert dependents("step_apo_round1", stages) == {"step_apo_round1"}
    assert dependents(StageId("step_dpo"), stages) == {"step_dpo_round1"}


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


def test_a_run_json_without_seed_offsets_resumes_and_a_changed_offset_refuses(collected, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(collected, run_dir)
    results = json.loads((run_dir / "run.json").read_text())
    assert results["settings"]["sft"]["seed_offset"] == 1 and results["settings"]["collect_0"]["seed_offset"] == 2
    assert "seed_offset" not in results["settings"]["evaluate"]
    # a run.json written before the offsets were recorded: the run resumes, nothing is redone, the offsets are added
    for settings in results["settings"].values():
        settings.pop("seed_offset", None)
    (run_dir / "run.json").write_text(json.dumps(results))
    before = (run_dir / "metrics.jsonl").read_text()
    train(run_dir, "stages=[sft,collect]")
    assert (run_dir / "metrics.jsonl").read_text() == before
    results = json.loads((run_dir / "run.json").read_text())
    assert results["settings"]["sft"]["seed_offset"] == 1 and results["settings"]["collect_0"]["seed_offset"] == 2
    results["settings"]["sft"]["seed_offset"] = 9   # as if SFT's offset had changed since it ran
    (run_dir / "run.json").write_text(json.dumps(results))
    with pytest.raises(StageSettingsChanged) as e:
        compose_run(run_dir, "stages=[sft,collect]")
    assert e.value.stage == "sft" and e.value.changes == ["seed_offset: 9 → 1"] and "recompute=[sft]" in str(e.value)


def test_a_run_json_without_a_version_resumes_and_keeps_keys_it_does_not_know(collected, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(collected, run_dir)
    results = json.loads((run_dir / "run.json").read_text())
    assert results.pop("version") == 1
    # as oreo wrote it before run.json had a version, with a key another tool added
    (run_dir / "run.json").write_text(json.dumps({**results, "notes": "by hand"}, indent=2))
    before = {name: (run_dir / name).read_bytes() for name in ("metrics.jsonl", "metrics.json")}
    train(run_dir, "stages=[sft,collect]")
    assert {name: (run_dir / name).read_bytes() for name in before} == before   # nothing redone
    assert json.loads((run_dir / "run.json").read_text()) == {"version": 1, **results, "notes": "by hand"}


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
