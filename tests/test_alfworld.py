"""ALFWorld adapter (oreo/tasks/alfworld.py) on the real games: listing, play, the expert, records.

Needs the data archive (``shared/data/alfworld.tar.gz``, unpacked once into the cache) and the
``alfworld`` extra; skipped without them."""
from __future__ import annotations

import collections
import json
import random
import re
from pathlib import Path

import pytest

from oreo.tasks import make_task
from oreo.tasks.agent import format_observation, parse_action
from oreo.tasks.alfworld import (
    ETO_INSTRUCTION,
    AlfworldConfig,
    AlfworldEnv,
    AlfworldTask,
    alfworld_data_dir,
    alfworld_game,
    alfworld_games,
)
from oreo.trajectory import Trajectory

ROOT = Path(__file__).resolve().parents[1]
ARCHIVES = [ROOT / "shared/data/alfworld.tar.gz", ROOT.parent / "shared/data/alfworld.tar.gz"]

# the hand-coded expert's steps to win the first unseen game of each kind (deterministic, seed 0)
EXPERT_STEPS = {"put": 5, "clean": 33, "heat": 7, "cool": 15, "examine": 11}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    archive = next((a for a in ARCHIVES if a.is_file()), None)
    if archive is None:
        pytest.skip(f"ALFWorld data not found (looked for {', '.join(map(str, ARCHIVES))})")
    return alfworld_data_dir(archive)


@pytest.fixture(scope="session")
def task(data_dir) -> AlfworldTask:
    return AlfworldTask(AlfworldConfig(data_dir=str(data_dir)))


@pytest.fixture(scope="session")
def env():
    pytest.importorskip("alfworld", reason="the alfworld extra is not installed: pip install 'oreo[alfworld]'")
    env = AlfworldEnv(max_steps=40)
    yield env
    env.close()


def test_eto_instruction_is_the_original_file():
    # the first version of ETO's alfworld_inst.txt: 1249 characters, typos and a literal "\n" included
    assert len(ETO_INSTRUCTION) == 1249
    assert "2. task {obj} from {recep}\n" in ETO_INSTRUCTION and "if the envrionment output" in ETO_INSTRUCTION
    assert '"Thought: your thoughts.\\nAction: your next action".\n' in ETO_INSTRUCTION
    assert ETO_INSTRUCTION.endswith("Action: <your next action>")


def test_splits_and_kinds(task, data_dir):
    counts = {split: len(task.games(split)) for split in ("seen", "unseen", "train")}
    assert counts == {"seen": 140, "unseen": 134, "train": 200}
    kinds = collections.Counter(g.kind for g in task.games("unseen"))
    assert kinds == {"put": 24, "clean": 31, "heat": 23, "cool": 21, "examine": 18, "puttwo": 17}
    games = task.problems("seen")
    assert [g.id for g in games] == sorted(g.id for g in games) and len({g.id for g in games}) == 140
    assert all(g.split == "seen" and g.id.startswith("seen/") and Path(g.spec).is_file() for g in games)
    assert alfworld_games(data_dir, "seen") == games
    assert task.game(games[7].id) == games[7]
    limited = make_task({"name": "alfworld", "data_dir": str(data_dir), "limits": {"unseen": 3}})
    assert limited.games("unseen") == task.games("unseen")[:3] and len(limited.games("seen")) == 140


def test_errors_name_the_path(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        AlfworldTask(AlfworldConfig(data_dir=str(tmp_path / "nowhere")))
    (tmp_path / "json_2.1.1").mkdir()
    with pytest.raises(FileNotFoundError, match="valid_unseen"):
        alfworld_games(tmp_path, "unseen")
    with pytest.raises(ValueError, match="unknown split"):
        alfworld_games(data_dir, "test")
    unseen = data_dir / "json_2.1.1" / "valid_unseen"
    trial = next(t.parent for t in sorted(unseen.rglob("traj_data.json")) if not (t.parent / "game.tw-pddl").exists())
    with pytest.raises(FileNotFoundError, match="game.tw-pddl"):
        alfworld_game(data_dir, f"unseen/{trial.relative_to(unseen).as_posix()}")
    unsolvable = next(s.parent for s in sorted(unseen.rglob("game.tw-pddl"))
                      if not json.loads(s.read_text())["solvable"])
    with pytest.raises(ValueError, match="not playable"):
        alfworld_game(data_dir, f"unseen/{unsolvable.relative_to(unseen).as_posix()}")


@pytest.mark.parametrize("kind", sorted(EXPERT_STEPS))
def test_expert_wins_real_games(task, env, kind):
    game = next(g for g in task.games("unseen") if g.kind == kind)
    first = env.reset(game)
    assert "Welcome" not in first and first.startswith("You are in the middle of a room.")
    assert "\nYour task is to: " in first and "\n\n" not in first

    outer = random.getstate()
    observation, reward, done, info = env.step("dance with the fridge")
    assert (observation, reward, done, info["won"], info["steps"]) == ("Nothing happens.", 0.0, False, False, 1)
    assert "look" in info["admissible_actions"] and any(a.startswith("go to ") for a in info["admissible_actions"])

    steps = 0
    while not done:
        action = env.expert_action()
        assert action in info["admissible_actions"]
        observation, reward, done, info = env.step(action)
        assert not observation.startswith("You arrive at loc")
        steps += 1
    assert (reward, info["won"], info["limit"], env.expert_action()) == (1.0, True, False, None)
    assert steps == EXPERT_STEPS[kind]
    assert random.getstate() == outer  # the expert's random choices leave the global generator alone


def test_step_limit(task):
    pytest.importorskip("alfworld", reason="the alfworld extra is not installed")
    env = AlfworldEnv(max_steps=3)
    try:
        env.reset(task.games("seen")[0])
        results = [env.step("look") for _ in range(3)]
        assert [r[2] for r in results] == [False, False, True]
        _, reward, done, info = results[-1]
        assert (reward, info["won"], info["limit"], info["steps"], env.expert_action()) == (0.0, False, True, 3, None)
        with pytest.raises(RuntimeError):
            env.step("look")
    finally:
        env.close()


def test_expert_records_replay(data_dir):
    pytest.importorskip("alfworld", reason="the alfworld extra is not installed")
    task = AlfworldTask(AlfworldConfig(data_dir=str(data_dir), limits={"train": 3}))
    records = task.sft_records(0)
    assert [r.problem_id for r in records] == [g.id for g in task.games("train")]
    assert [r.reward for r in records] == [1.0, 1.0, 1.0]
    for r in records:
        assert isinstance(r, Trajectory) and r.step_rewards == [0.0] * (len(r.steps) - 1) + [1.0]
        assert len(r.observations) == len(r.steps) == r.meta["turns"] > 0
        assert r.prompt[0] == {"role": "user", "content": ETO_INSTRUCTION}
        assert r.prompt[1] == {"role": "assistant", "content": "OK"}

    # replay every record's actions in its own environment, all stepping together as in a rollout
    envs = [task.make_env() for _ in records]
    try:
        for env, r in zip(envs, records):
            assert env.reset(task.game(r.problem_id)) == r.prompt[2]["content"]
        for t in range(max(len(r.steps) for r in records)):
            for env, r in zip(envs, records):
                if t < len(r.steps):
                    observation, reward, done, _ = env.step(parse_action(r.steps[t]))
                    assert format_observation(observation) == r.observations[t]
                    assert (reward, done) == ((r.reward, True) if t == len(r.steps) - 1 else (0.0, False))
    finally:
        for env in envs:
            env.close()


def test_one_collection_round_with_a_tiny_model(data_dir, tmp_path):
    """A tiny random policy plays real games through the batched collector into the buffer."""
    pytest.importorskip("alfworld", reason="the alfworld extra is not installed")
    from oreo.buffer import Buffer
    from oreo.encode import Encoder
    from oreo.models import load_policy
    from oreo.rollout.collector import collect
    from oreo.rollout.sampler import HFSampler

    task = AlfworldTask(AlfworldConfig(data_dir=str(data_dir), max_steps=3, chat=False, limits={"train": 2}))
    model, tok = load_policy("tiny", tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                           "intermediate_size": 64, "max_position_embeddings": 4096})
    sampler = HFSampler(model, tok, Encoder.unbounded(tok), batch_size=8, max_new_tokens=12)
    buffer = Buffer(tmp_path / "buffer")
    info = collect(task, task.games("train"), sampler, buffer, n=2, temperature=1.0, seed=0)
    records = buffer.load()
    assert info["records"] == len(records) == 4 and info["tokens"] > 0
    for r in records:
        assert isinstance(r, Trajectory) and len(r.step_rewards) == len(r.steps)
        assert r.prompt.startswith(ETO_INSTRUCTION) and r.reward == 0.0  # random text never wins
        assert 1 <= len(r.steps) <= 3
        assert r.meta["invalid"] or len(r.observations) == len(r.steps)
