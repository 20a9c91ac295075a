"""The embedded household environment: generation, dynamics, the expert, the teacher's slips, records."""
import random
from collections import Counter

import pytest

from oreo.models import word_tokenizer
from oreo.tasks import make_task
from oreo.tasks.agent import parse_action
from oreo.tasks.household import (
    APPLIANCE,
    HouseholdConfig,
    HouseholdEnv,
    HouseholdTask,
    generate_scene,
    vocabulary,
)
from oreo.trajectory import Trajectory
from oreo.types import Game


@pytest.fixture(scope="module")
def task():
    return HouseholdTask(HouseholdConfig(n_train=120, n_test=40))


def play_expert(env, game):
    env.reset(game)
    while True:
        action = env.expert_action()
        assert action in env.admissible_actions(), action
        observation, reward, done, info = env.step(action)
        if done:
            return reward, info


def test_games_are_deterministic_disjoint_and_cover_every_kind(task):
    again = HouseholdTask(HouseholdConfig(n_train=120, n_test=40))
    assert [g.id for g in task.games("train")] == [g.id for g in again.games("train")]
    assert not {g.spec for g in task.games("train")} & {g.spec for g in task.games("test")}
    kinds = Counter(g.kind for g in task.games("train"))
    assert set(kinds) == {"put", "clean", "heat", "cool", "examine"} and min(kinds.values()) >= 12
    other_seed = HouseholdTask(HouseholdConfig(n_train=120, n_test=40, seed=1))
    assert [g.spec for g in other_seed.games("train")] != [g.spec for g in task.games("train")]
    with pytest.raises(KeyError, match="unknown split"):
        task.games("valid")


def test_the_expert_wins_every_game_with_admissible_actions(task):
    env = task.make_env()
    for game in task.games("train") + task.games("test"):
        reward, info = play_expert(env, game)
        assert reward == 1.0 and info["won"] and not info["limit"] and info["steps"] <= task.max_steps


def test_dynamics_follow_the_rules():
    cfg = HouseholdConfig()
    seed = next(s for s in range(1000) if generate_scene(s, cfg).kind == "clean")
    env = HouseholdEnv(cfg)
    first = env.reset(Game("g", "test", "clean", seed))
    scene = env.scene
    assert first.endswith(f"Your task is to: {scene.goal}") and "put a clean" in scene.goal
    assert env.step("fly to the moon")[0] == "Nothing happened."
    home = next(r for r, v in scene.contents.items() if f"{scene.target} 1" in v)
    assert env.step(f"take {scene.target} 1 from {home}")[0] == "Nothing happened."  # not there yet
    env.step(f"go to {home}")
    if home in env.closed:
        assert env.step(f"take {scene.target} 1 from {home}")[0] == "Nothing happened."  # closed
        assert env.step(f"open {home}")[0].startswith(f"You open the {home}.")
    assert env.step(f"take {scene.target} 1 from {home}")[0] == f"You pick up the {scene.target} 1 from the {home}."
    dest = next(r for r in scene.receptacles if r.split()[0] == scene.place)
    env.step(f"go to {dest}")
    if dest in env.closed:
        env.step(f"open {dest}")
    observation, reward, done, info = env.step(f"put {scene.target} 1 in/on {dest}")
    assert observation.startswith("You put") and reward == 0.0 and not done  # not clean: no success


def test_the_step_limit_ends_an_episode_with_no_reward():
    env = HouseholdEnv(HouseholdConfig(max_steps=3))
    env.reset(Game("g", "test", "", 5))
    outs = [env.step("look") for _ in range(3)]
    assert [o[2] for o in outs] == [False, False, True]
    assert outs[-1][1] == 0.0 and outs[-1][3]["limit"] and outs[-1][3]["admissible_actions"] is None
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")


def test_the_teacher_skips_the_appliance_step_systematically(task):
    """Found inside the goal's appliance, the object passes for done: the teacher then fails."""
    def skip_prone(game):
        scene = generate_scene(game.spec, task.cfg)
        found = next(r for r, v in scene.contents.items() if f"{scene.target} 1" in v)
        return scene.kind in APPLIANCE and found.split()[0] == APPLIANCE[scene.kind]

    prone = [g for g in task.games("train") if skip_prone(g)]
    assert prone
    always = HouseholdEnv(HouseholdConfig(teacher_skip_rate=1.0, teacher_error_rate=0.0))
    never = HouseholdEnv(HouseholdConfig(teacher_skip_rate=0.0, teacher_error_rate=0.0))
    rng = random.Random(0)
    assert not any(always.teacher_episode(g, rng)[3] for g in prone)
    assert all(never.teacher_episode(g, rng)[3] for g in task.games("train"))


def test_expert_records_are_valid_multi_turn_records_in_the_word_vocabulary(task):
    records = task.sft_records(0, 1)
    assert len(records) == len(task.games("train"))
    tok = word_tokenizer(vocabulary())
    success = sum(r.correct for r in records) / len(records)
    assert 0.6 < success < 1.0  # an imperfect teacher
    for r in records:
        assert isinstance(r, Trajectory) and r.meta["source"] == "expert"
        assert len(r.observations) == len(r.steps) == len(r.step_rewards) == r.meta["turns"]
        # the environment's reward of each turn: 1 on the winning turn, 0 before (and on a lost episode)
        assert r.step_rewards == [0.0] * (len(r.steps) - 1) + [float(r.correct)] and r.reward == float(r.correct)
        assert all(parse_action(s) for s in r.steps)
        text = r.prompt + "".join(s + o for s, o in zip(r.steps, r.observations))
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.pad_token_id not in ids and tok.decode(ids) == text  # every word is in the vocabulary


def test_make_task_builds_household_and_names_bad_keys():
    t = make_task({"name": "household", "n_train": 4, "n_test": 2})
    assert t.kind == "agent" and len(t.problems("train")) == 4
    with pytest.raises(ValueError, match="task.rooms: unknown key; known: .*max_receptacles"):
        make_task({"name": "household", "rooms": 3})
    with pytest.raises(ValueError, match="kinds"):
        make_task({"name": "household", "kinds": ["fly"]})
