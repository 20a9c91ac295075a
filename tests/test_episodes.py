"""Multi-turn rollouts: batched episodes, invalid turns, collection into the buffer (resumable), training
and evaluation on episode records."""
import dataclasses
import json
import random

import pytest

from oreo.buffer import Buffer
from oreo.encode import Encoder
from oreo.evaluate import evaluate_episodes
from oreo.models import load_policy
from oreo.rollout.collector import collect
from oreo.rollout.episodes import run_episodes, sampled_actions
from oreo.rollout.sampler import HFSampler
from oreo.tasks.agent import format_turn, parse_action
from oreo.tasks.household import HouseholdConfig, HouseholdTask
from oreo.trajectory import Trajectory
from oreo.types import Choice, Completion, Game


@pytest.fixture(scope="module")
def task():
    return HouseholdTask(HouseholdConfig(n_train=12, n_test=6, max_receptacles=4, max_steps=20))


def expert_act(task, calls=None, noise=0.0):
    """An ``act`` that replays each context in an environment and answers with the expert's action (or,
    with probability ``noise``, "look"); it records the batch size of every call."""
    def act(contexts, seed):
        if calls is not None:
            calls.append(len(contexts))
        rng = random.Random(seed)
        out = []
        for ctx in contexts:
            game = next(g for split in ("train", "test") for g in task.games(split)
                        if task.prompt(g, task.make_env().reset(g)) == ctx.prompt)
            env = task.make_env()
            env.reset(game)
            for turn in ctx.steps:
                env.step(parse_action(turn))
            action = "look" if rng.random() < noise else env.expert_action()
            out.append(Choice(format_turn(action), None, 3, 1))
        return out
    return act


def test_episodes_step_together_one_call_per_turn(task):
    calls = []
    episodes = run_episodes(task, task.games("train")[:4], expert_act(task, calls), repeats=2, seed=0)
    assert len(episodes) == 8 and all(e.won and not e.invalid for e in episodes)
    assert [e.repeat for e in episodes[:2]] == [0, 1] and episodes[0].game == episodes[1].game
    assert len(calls) == max(len(e.steps) for e in episodes)  # one generation call per turn
    assert calls[0] == 8 and calls == sorted(calls, reverse=True)  # finished episodes drop out
    for e in episodes:
        assert len(e.observations) == len(e.steps) and e.observations[0].startswith("Observation: ")


def test_a_turn_without_action_or_cut_ends_the_episode_as_invalid(task):
    def act(contexts, seed):
        return [Choice("Thought: hmm", None, 2, 1) if len(c.steps) == 1 else
                Choice("Action: look", None, 2, 1) for c in contexts]
    (e,) = run_episodes(task, task.games("train")[:1], act)
    assert e.invalid and not e.won and e.finished and len(e.steps) == 2 and len(e.observations) == 1
    (cut,) = run_episodes(task, task.games("train")[:1], lambda cs, s: [Choice("Action: go t", None, 24, 1, True)
                                                                        for _ in cs])
    assert cut.invalid and not cut.finished
    record = cut.record(task, round=0)
    assert record.step_rewards == [0.0] and record.reward == 0.0 and not record.correct
    enc = Encoder(word_tok(task)).encode(record)
    assert enc.input_ids[-1] != word_tok(task).eos_token_id  # a cut turn has no end-of-turn token


def word_tok(task):
    from oreo.models import tiny_tokenizer
    return tiny_tokenizer("household")


def test_given_turns_are_played_before_act_continues(task):
    games = task.games("train")[:3]
    full = run_episodes(task, games, expert_act(task))
    seen = []

    def recording(contexts, seed):
        seen.extend(len(c.steps) for c in contexts)
        return expert_act(task)(contexts, seed)

    prefixes = [e.steps[:2] for e in full[:2]] + [full[2].steps]   # the last game's whole episode is given
    part = run_episodes(task, games, recording, prefixes=prefixes)
    for e, p in zip(full, part):
        assert (p.steps, p.observations, p.rewards, p.won) == (e.steps, e.observations, e.rewards, e.won)
    assert min(seen) == 2 and len(seen) == sum(len(e.steps) - 2 for e in full[:2])
    assert [p.tokens for p in part] == [3 * (len(e.steps) - 2) for e in full[:2]] + [0]   # given turns cost nothing


def test_episode_records_encode_observations_as_non_actions(task):
    (e,) = run_episodes(task, task.games("train")[:1], expert_act(task))
    record = e.record(task, round=3)
    assert isinstance(record, Trajectory) and record.id == f"r3-{e.game.id}-0"
    assert record.reward == 1.0 and record.correct and record.meta["turns"] == len(e.steps)
    assert record.step_rewards == [0.0] * (len(e.steps) - 1) + [1.0]  # the household pays on success
    tok = word_tok(task)
    for gran in ("token", "turn"):
        enc = Encoder(tok, granularity=gran, max_len=4096).encode(record)
        actions = tok.decode([i for i, a in zip(enc.input_ids[1:], enc.action_mask) if a])
        assert actions == "".join(s + tok.eos_token for s in e.steps)
        if gran == "turn":  # before each turn and before its end-of-turn token
            assert sum(enc.state_mask) == 2 * len(e.steps)


class ScoredEnv:
    """An environment that scores every turn, in [0, 1] over an episode: "work" earns 0.25, "rest" 0.1,
    anything else 0; an episode is 3 turns and is won with a total of at least 0.75."""
    max_steps = 3

    def reset(self, game):
        self.turns, self.total = 0, 0.0
        return f"Day 0 of {game.id}."

    def step(self, action):
        reward = {"work": 0.25, "rest": 0.1}.get(action, 0.0)
        self.turns, self.total = self.turns + 1, self.total + reward
        done = self.turns == self.max_steps
        won = done and self.total >= 0.75
        return f"Day {self.turns}.", reward, done, {"won": won, "steps": self.turns, "limit": done and not won,
                                                    "admissible_actions": ["work", "rest"]}

    def expert_action(self):
        return "work"

    def close(self):
        pass


class ScoredTask:
    name, kind, max_steps = "scored", "agent", 3

    def games(self, split):
        return [Game(f"g{i}", split, "chores") for i in range(3)]

    def make_env(self):
        return ScoredEnv()

    def prompt(self, game, first_observation):
        return f"Earn what you can.\n{first_observation}\n"


def test_episode_records_keep_the_environments_fractional_per_turn_reward(tmp_path):
    plans = {"g0": ["work", "work", "work"], "g1": ["work", "rest", "work"], "g2": ["rest", "work", None]}

    def act(contexts, seed):
        out = []
        for c in contexts:
            action = plans[c.prompt.split("Day 0 of ")[1][:2]][len(c.steps)]
            out.append(Choice("Thought: no action" if action is None else format_turn(action), None, 1, 1))
        return out

    task = ScoredTask()
    episodes = run_episodes(task, task.games("train"), act)
    records = [e.record(task, round=0) for e in episodes]
    assert [r.step_rewards for r in records] == [[0.25, 0.25, 0.25], [0.25, 0.1, 0.25], [0.1, 0.25, 0.0]]
    assert [r.reward for r in records] == pytest.approx([0.75, 0.6, 0.35])  # not binarised
    assert [r.correct for r in records] == [True, False, False]  # correct: the environment said won
    assert records[2].meta["invalid"] and len(records[2].observations) == 2
    buffer = Buffer(tmp_path)
    buffer.append(records)
    assert buffer.load() == [dataclasses.replace(r, round=0) for r in records]  # kept through the buffer
    assert buffer.stats()["mean_reward"] == pytest.approx((0.75 + 0.6 + 0.35) / 3)


class ScriptedSampler:
    """A deterministic stand-in sampler: per context, the expert's action or a random admissible one."""
    def __init__(self, task):
        self.task, self.calls = task, 0

    def generate(self, contexts, *, n=1, temperature=1.0, seed=0, progress=None, stop=None, max_new_tokens=None):
        self.calls += 1
        choices = expert_act(self.task, noise=0.3)(contexts, seed)
        return [[Completion(c.response, True, 3)] for c in choices]


def test_collect_writes_episodes_to_the_buffer_and_resumes(task, tmp_path):
    games = task.games("train")
    whole = Buffer(tmp_path / "whole")
    info = collect(task, games, ScriptedSampler(task), whole, n=2, temperature=1.0, seed=5, problems_per_chunk=4)
    records = whole.load()
    assert info["records"] == len(records) == 2 * len(games)
    assert 0 < info["accuracy"] < 1  # the noisy actor wins some, not all
    for r in records:
        assert isinstance(r, Trajectory) and len(r.step_rewards) == len(r.steps) and sum(r.step_rewards) == r.reward
        assert r.correct == (r.reward == 1.0) and r.meta["temperature"] == 1.0

    class Killed(Exception):
        pass

    second_chunk = {task.prompt(g, task.make_env().reset(g)) for g in games[4:8]}

    class Dying(ScriptedSampler):
        def generate(self, contexts, **kw):
            if any(c.prompt in second_chunk for c in contexts) and self.calls >= 2:  # dies inside chunk 2
                raise Killed
            return super().generate(contexts, **kw)

    cut = Buffer(tmp_path / "cut")
    with pytest.raises(Killed):
        collect(task, games, Dying(task), cut, n=2, temperature=1.0, seed=5, problems_per_chunk=4)
    partial = next((tmp_path / "cut").glob("round_000.partial*.jsonl"))
    assert len(partial.read_text().splitlines()) == 1  # the first chunk survived
    collect(task, games, ScriptedSampler(task), cut, n=2, temperature=1.0, seed=5, problems_per_chunk=4)
    assert [json.dumps(r.to_dict(), sort_keys=True) for r in cut.load()] == \
        [json.dumps(r.to_dict(), sort_keys=True) for r in records]


def test_a_tiny_model_collects_and_is_evaluated_on_episodes(task, tmp_path):
    model, tok = load_policy("tiny", tiny={"vocabulary": "household", "hidden_size": 32, "num_layers": 1,
                                           "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 2048})
    sampler = HFSampler(model, tok, Encoder.unbounded(tok), batch_size=64, max_new_tokens=8)
    buffer = Buffer(tmp_path / "buffer")
    info = collect(task, task.games("train")[:3], sampler, buffer, n=2, temperature=1.0, seed=0)
    assert info["records"] == 6 and info["tokens"] > 0
    for r in buffer.load():
        assert isinstance(r, Trajectory) and len(r.step_rewards) == len(r.steps)
        assert r.meta["invalid"] or len(r.observations) == len(r.steps)
    result = evaluate_episodes(task, task.games("test"), sampled_actions(sampler, temperature=0.0),
                               out_path=tmp_path / "eval.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == result["n"] == 6 and set(rows[0]) >= {"game", "kind", "turns", "success"}
    assert result["success"] == sum(r["success"] for r in rows) / 6


def test_evaluation_counts_the_expert_as_always_successful(task, tmp_path):
    result = evaluate_episodes(task, task.games("test"), expert_act(task), games_per_batch=4,
                               out_path=tmp_path / "eval.jsonl")
    assert result["success"] == 1.0 and result["invalid"] == 0.0 and result["n"] == 6
    assert set(result["by_kind"]) <= {"put", "clean", "heat", "cool", "examine"}


def test_an_interrupted_evaluation_resumes_by_block_with_the_same_rows(task, tmp_path):
    """Blocks of 2 games; a kill in the second block keeps the first, which a rerun with the same
    fingerprint reuses (its games are not played again) and a rerun with another fingerprint replays."""
    games, fp = task.games("test"), {"policy": "noisy expert"}
    whole = evaluate_episodes(task, games, expert_act(task, noise=0.3), games_per_batch=2,
                              out_path=tmp_path / "a/test.jsonl", fingerprint=fp)


    def recording(played, die_after=None):
        def act(contexts, seed):
            played.extend(c.prompt for c in contexts)
            if die_after is not None and len(set(played)) > die_after:
                raise KeyboardInterrupt
            return expert_act(task, noise=0.3)(contexts, seed)
        return act

    with pytest.raises(KeyboardInterrupt):
        evaluate_episodes(task, games, recording([], die_after=2), games_per_batch=2,
                          out_path=tmp_path / "b/test.jsonl", fingerprint=fp)
    assert len((tmp_path / "b/test.partial.jsonl").read_text().splitlines()) == 1
    (tmp_path / "c").mkdir()
    (tmp_path / "c/test.partial.jsonl").write_text((tmp_path / "b/test.partial.jsonl").read_text())

    replayed, other = [], []
    resumed = evaluate_episodes(task, games, recording(replayed), games_per_batch=2,
                                out_path=tmp_path / "b/test.jsonl", fingerprint=fp)
    first_block = {task.prompt(g, task.make_env().reset(g)) for g in games[:2]}
    assert len(set(replayed)) == 4 and not set(replayed) & first_block
    evaluate_episodes(task, games, recording(other), games_per_batch=2, out_path=tmp_path / "c/test.jsonl",
                      fingerprint={"policy": "another"})
    assert len(set(other)) == 6
    assert (tmp_path / "a/test.jsonl").read_text() == (tmp_path / "b/test.jsonl").read_text()
    assert resumed == whole and not list((tmp_path / "b").glob("*.partial*"))


def test_oreo_on_episodes_bootstraps_across_observations_at_token_and_turn_level(task, tmp_path):
    """Token level: the state before a turn's end-of-turn token bootstraps from the state just before the
    next turn, skipping the observation; turn level: one state per turn. Both train."""
    import copy

    import torch

    from oreo.losses import next_state_index
    from oreo.trainers.common import TrainConfig
    from oreo.trainers.oreo import OREOConfig, OREOObjective

    records = task.sft_records(0)[:4]
    policy, tok = load_policy("tiny", tiny={"vocabulary": "household", "hidden_size": 32, "num_layers": 1,
                                            "num_heads": 2, "intermediate_size": 64})
    enc = Encoder(tok, granularity="token", max_len=4096).encode(records[0])
    nxt = next_state_index(torch.tensor([enc.state_mask]))[0].tolist()
    ends = [j - 1 for j, i in enumerate(enc.input_ids) if i == tok.eos_token_id]  # states before end-of-turn
    starts = [t + 1 for t in range(len(enc.action_mask)) if enc.action_mask[t] and not enc.action_mask[t - 1]]
    assert len(ends) == len(starts) == len(records[0].steps)
    for k, t in enumerate(ends[:-1]):
        assert nxt[t] == starts[k + 1] - 1  # the last observation token: the next turn's first state
        assert not any(enc.action_mask[t + 1:starts[k + 1] - 1])
    assert nxt[ends[-1]] == len(enc.action_mask)  # the last turn's end: terminal
    turn = Encoder(tok, granularity="turn", max_len=4096).encode(records[0])
    assert sum(turn.state_mask) == 2 * len(records[0].steps)
    assert all(turn.state_mask[t] for t in ends)  # the end of each turn is a state at turn level too
    for granularity in ("token", "turn"):
        trainer = OREOObjective(copy.deepcopy(policy), tok, OREOConfig(granularity=granularity, max_len=4096),
                              TrainConfig(epochs=1, batch_size=2, micro_batch_size=2))
        info = trainer.fit(records, out_dir=tmp_path / granularity)
        assert info["steps"] == 2 and (tmp_path / granularity / "value").exists()
