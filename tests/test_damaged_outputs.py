"""A finished stage's outputs are checked before a rerun relies on them: a cut or changed weight file, trainer
state or evaluation file is found and named, never read as if whole; a full disk says so, with the path."""
import json
import shutil
import subprocess

import pytest
import torch

from oreo.checkpoint import (
    MANIFEST,
    CheckpointError,
    DiskFull,
    check_safetensors,
    save_atomically,
    verify_manifest,
    write_manifest,
)
from oreo.models import ValueModel, load_policy, tiny_causal_lm
from oreo.pipeline import Run
from oreo.run_config import compose


def cut(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def tiny_folder(tmp_path):
    model = tiny_causal_lm(40, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    model.save_pretrained(tmp_path / "policy")
    value = ValueModel.from_policy(model)
    value.save_pretrained(tmp_path / "value")
    return tmp_path / "policy", tmp_path / "value"


@pytest.mark.parametrize("keep", [5, 40, -100])
def test_a_cut_safetensors_file_is_named(tmp_path, keep):
    policy, value = tiny_folder(tmp_path)
    file = policy / "model.safetensors"
    cut(file, keep if keep > 0 else file.stat().st_size + keep)
    with pytest.raises(CheckpointError, match=r"policy/model\.safetensors: (damaged|cut short).*rerun the stage"):
        check_safetensors(policy)
    with pytest.raises(CheckpointError, match=r"policy/model\.safetensors"):
        load_policy(str(policy))
    head = value / "value_head.safetensors"
    cut(head, head.stat().st_size - 4)
    with pytest.raises(CheckpointError, match=r"value/value_head\.safetensors: cut short"):
        ValueModel.from_pretrained(value)


def test_a_whole_safetensors_file_passes(tmp_path):
    policy, value = tiny_folder(tmp_path)
    check_safetensors(policy)
    check_safetensors(value)
    assert isinstance(ValueModel.from_pretrained(value), ValueModel)


def test_the_manifest_finds_a_cut_a_changed_and_a_missing_file(tmp_path):
    def write(folder):
        (folder / "weights.bin").write_bytes(bytes(range(200)))
        (folder / "state").mkdir()
        torch.save({"step": 3}, folder / "state" / "state.pt")

    out = save_atomically(tmp_path / "stage", write)
    assert (out / MANIFEST).exists() and verify_manifest(out, "hint")
    files = json.loads((out / MANIFEST).read_text())["files"]
    assert set(files) == {"weights.bin", "state/state.pt"} and all("sha256" in f for f in files.values())

    data = (out / "weights.bin").read_bytes()
    (out / "weights.bin").write_bytes(data[:150])
    with pytest.raises(CheckpointError, match=r"weights\.bin: cut short: 150 bytes, 200 when written; do this"):
        verify_manifest(out, "do this")
    (out / "weights.bin").write_bytes(data[::-1])  # same size, other bytes
    with pytest.raises(CheckpointError, match=r"weights\.bin: changed since it was written"):
        verify_manifest(out, "do this")
    (out / "weights.bin").write_bytes(data)
    (out / "state" / "state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"state\.pt: missing"):
        verify_manifest(out, "do this")


def test_sizes_only_manifests_and_folders_without_one(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("abc")
    assert verify_manifest(tmp_path / "a", "") is False   # written before manifests: nothing to check
    write_manifest(tmp_path / "a", hashes=False)
    (tmp_path / "a" / "f").write_text("abd")              # not hashed: a same-size change passes
    assert verify_manifest(tmp_path / "a", "")
    (tmp_path / "a" / "f").write_text("ab")
    with pytest.raises(CheckpointError, match="cut short"):
        verify_manifest(tmp_path / "a", "")


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB file system (tmpfs; needs root), so a write really runs out of space."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)   # lazy: a cut write may still hold a file open


@pytest.mark.parametrize("size", [66_000, 100_000, 300_000, 2_000_000])   # floats: all over 256 KiB
def test_a_full_disk_during_torch_save_says_so_with_the_path(small_disk, size):
    def write(folder):
        torch.save({"weights": torch.zeros(size)}, folder / "state.pt")

    save_atomically(small_disk / "stage", lambda folder: (folder / "small").write_text("x"))
    with pytest.raises(DiskFull, match=r"disk/stage\.tmp: could not be written, the disk is full") as e:
        save_atomically(small_disk / "stage", write)
    assert "rerun the same command" in str(e.value)
    assert (small_disk / "stage" / "small").read_text() == "x"   # the previous checkpoint is whole
    assert not (small_disk / "stage.tmp").exists()                # and the cut one gave its space back


def test_other_save_failures_are_not_called_a_full_disk(tmp_path):
    def write(folder):
        raise RuntimeError("unexpected pos 576 vs 534")   # the same words, with space left: not a full disk

    with pytest.raises(RuntimeError, match="unexpected pos") as e:
        save_atomically(tmp_path / "stage", write)
    assert not isinstance(e.value, DiskFull)


# ---------------------------------------------------------------- a finished run's outputs, reused by a rerun
@pytest.fixture(scope="module")
def finished_sft(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    Run(compose([f"run_dir={run_dir}", "+experiment=smoke", "stages=[sft]"])).run()
    return run_dir


def rerun(run_dir, *overrides):
    return Run(compose([f"run_dir={run_dir}", "+experiment=smoke", "stages=[sft]", *overrides])).run()


@pytest.mark.parametrize("file", ["model.safetensors", "trainer_state/state.pt", "config.json"])
def test_a_cut_file_of_a_finished_stage_is_found_before_it_is_used(finished_sft, tmp_path, file):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_sft, run_dir)
    path = run_dir / "checkpoints" / "sft" / file
    cut(path, path.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=rf"checkpoints/sft/{file}: cut short.*recompute=\[sft\]"):
        rerun(run_dir)


def test_a_cut_evaluation_file_is_measured_again(finished_sft, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_sft, run_dir)
    path = run_dir / "eval" / "sft-test.jsonl"
    whole = path.read_text().splitlines()
    path.write_text("\n".join(whole[:7]) + "\n" + whole[7][:10])   # 7 rows and a cut one
    results = rerun(run_dir)
    assert f"{path}: 7 of {len(whole)} rows and 1 damaged; measuring sft on test again" in capsys.readouterr().out
    assert path.read_text().splitlines() == whole
    assert results.accuracy["sft"]["test"] == sum(json.loads(r)["correct"] for r in whole) / len(whole)


def test_a_whole_run_is_reused_without_remeasuring(finished_sft, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_sft, run_dir)
    before = (run_dir / "eval" / "sft-test.jsonl").stat().st_mtime_ns
    rerun(run_dir)
    assert "again" not in capsys.readouterr().out
    assert (run_dir / "eval" / "sft-test.jsonl").stat().st_mtime_ns == before
