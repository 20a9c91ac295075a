"""DPO and KTO objectives: pairs from the buffer, mismatched pairs for KTO's reference point, and a few
steps of training that move the policy the way each loss says."""
from __future__ import annotations

import copy

import pytest
import torch

from oreo.encode import Encoded, Encoder
from oreo.models import load_policy
from oreo.trainers.common import TrainConfig
from oreo.trainers.dpo import DPOConfig, DPOObjective, Pair, preference_pairs
from oreo.trainers.kto import KTOConfig, KTOObjective, mismatch
from oreo.trajectory import Trajectory

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def record(i: int, problem: str, correct: bool, steps=None, observations=()) -> Trajectory:
    return Trajectory(id=f"r{i}", task="t", problem_id=problem, prompt=f"{problem} ?\n",
                      steps=steps or [f"{i}+1={i + 1}\n", f"#### {i + 1}"], observations=list(observations),
                      reward=float(correct), correct=correct)


def encoded(records: list[Trajectory]) -> list[Encoded]:
    return [Encoded([0, 1, 2], [0, 1], [0, 1], r.reward, i) for i, r in enumerate(records)]


def test_pairs_are_correct_times_incorrect_per_problem_capped_and_seeded():
    records = ([record(i, "a", i < 3) for i in range(5)]         # 3 correct × 2 incorrect = 6 pairs
               + [record(5 + i, "b", True) for i in range(3)]    # no incorrect: no pair
               + [record(8, "c", True), record(9, "c", False)])  # one pair
    data = encoded(records)
    pairs = preference_pairs(data, records, max_per_problem=4, seed=0)
    assert len(pairs) == 4 + 1
    for p in pairs:
        chosen, rejected = records[p.chosen.index], records[p.rejected.index]
        assert chosen.correct and not rejected.correct
        assert chosen.problem_id == rejected.problem_id
    assert len({(p.chosen.index, p.rejected.index) for p in pairs}) == len(pairs)  # without replacement
    same = preference_pairs(data, records, max_per_problem=4, seed=0)
    assert [(p.chosen.index, p.rejected.index) for p in same] == [(p.chosen.index, p.rejected.index) for p in pairs]
    draws = {tuple((p.chosen.index, p.rejected.index) for p in preference_pairs(data, records, 4, seed=s))
             for s in range(8)}
    assert len(draws) > 1  # the seed chooses which pairs
    assert len(preference_pairs(data, records, max_per_problem=100, seed=0)) == 6 + 1


def test_mismatch_joins_one_prompt_to_another_response():
    a = Encoded([10, 11, 12, 13], [0, 1, 1], [0, 1, 1], 1.0, 0)          # prompt 10 11, response 12 13
    b = Encoded([20, 21, 22, 23, 24], [0, 0, 1, 0], [0, 0, 1, 0], 0.0, 1)  # prompt 20 21 22, actions 23, obs 24
    m = mismatch(a, b)
    assert m.input_ids == [10, 11, 23, 24]
    assert m.action_mask == [0, 1, 0] and len(m.action_mask) == len(m.input_ids) - 1


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny", tiny=TINY, seed=0)


def test_kto_balances_desirable_and_undesirable_unless_told(tiny):
    policy, tok = tiny
    records = [record(i, f"p{i}", i % 4 == 0) for i in range(8)]   # 2 desirable, 6 undesirable
    balanced = KTOObjective(policy, tok, KTOConfig(undesirable_weight=0.5), reference=copy.deepcopy(policy))
    balanced.encode(records)
    assert balanced.desirable_weight == pytest.approx(0.5 * 6 / 2)   # λ_D·n_D = λ_U·n_U
    fixed = KTOObjective(policy, tok, KTOConfig(desirable_weight=1.25), reference=copy.deepcopy(policy))
    fixed.encode(records)
    assert fixed.desirable_weight == 1.25


def train_records() -> list[Trajectory]:
    out = []
    for p in range(8):
        out.append(record(2 * p, f"p{p}", True, steps=[f"{p}+{p}={2 * p}\n", f"#### {2 * p}"]))
        out.append(record(2 * p + 1, f"p{p}", False, steps=[f"{p}+{p}={2 * p + 1}\n", f"#### {2 * p + 1}"]))
    return out


def sequence_logprob(model, tok, rec) -> float:
    e = Encoder(tok, max_len=64).encode(rec)
    ids = torch.tensor([e.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    return float((logp * torch.tensor(e.action_mask)).sum())


def margin(model, tok, records) -> float:
    """Mean over problems of log π(correct) − log π(incorrect)."""
    logps = [sequence_logprob(model, tok, r) for r in records]
    return sum(logps[i] - logps[i + 1] for i in range(0, len(logps), 2)) / (len(logps) // 2)


@pytest.mark.parametrize("name", ["dpo", "ipo", "kto"])
def test_training_prefers_the_correct_responses(tiny, tmp_path, name):
    model, tok = tiny
    policy = copy.deepcopy(model)
    records = train_records()
    train = TrainConfig(epochs=6, batch_size=4, micro_batch_size=2, lr=3e-3, warmup_ratio=0.0, log_every=1)
    reference = copy.deepcopy(model)
    if name == "kto":
        objective = KTOObjective(policy, tok, KTOConfig(beta=0.5, max_len=64), train, reference=reference)
    else:
        objective = DPOObjective(policy, tok, DPOConfig(beta=0.5, ipo=name == "ipo", max_len=64), train,
                                 reference=reference, cache_dir=tmp_path / "cache", ref_name="tiny")
    before = margin(model, tok, records)
    info = objective.fit(records, out_dir=tmp_path / name)
    assert info["steps"] == (6 * 16 // 4 if name == "kto" else 6 * 8 // 4)
    assert margin(policy, tok, records) > before + 1.0
    assert (tmp_path / name / "config.json").exists()
    assert (objective.reference is None) == (name != "kto")  # DPO needs only the cached log-probs
    for k, v in reference.state_dict().items():  # the reference stayed frozen
        assert torch.equal(v, model.state_dict()[k]), k


def test_dpo_counts_turn_tokens_only(tiny):
    """An agent episode's observations never enter the policy's sequence log-probability."""
    model, tok = tiny
    objective = DPOObjective(copy.deepcopy(model), tok, DPOConfig(max_len=256), TrainConfig(),
                             reference=copy.deepcopy(model))
    rec = record(0, "g", True, steps=["go east", "take key"], observations=["You see a key.", "Done."])
    data = objective.encode_trajectories([rec], "dpo")
    objective.prepare(torch.device("cpu"))
    batch = objective.collate([Pair(data[0], data[0])])
    logp = objective.action_logprobs(batch)
    am = batch.action_mask
    assert (logp[~am] == 0).all() and (logp[am] < 0).all()
    e = data[0]
    observation_positions = [t for t in range(len(e.action_mask)) if not e.action_mask[t]]
    assert len(observation_positions) > len(tok(rec.prompt)["input_ids"])  # the observations are there
    ids = batch.input_ids
    with torch.no_grad():
        full = torch.log_softmax(objective.policy(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    torch.testing.assert_close(logp[0][am[0]], full[am[0]], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- Step-APO (CPL) on plan trees
def plan_tree_rows(i: int) -> list[Trajectory]:
    """A plan tree: "Plan +1" (Q 0.6) and "Plan -1" (Q -0.4) at the root; below the first, a right and a
    wrong solution (Q ±1)."""
    from oreo.search.tree import Tree

    tree = Tree(f"tree{i}", f"p{i}", f"{i} +1\n", "t")
    up, _ = tree.add(tree.root, "Plan +1\n")
    down, _ = tree.add(tree.root, "Plan -1\n")
    up.value, down.value = 0.6, -0.4
    for text, reward in ((f"{i}+1={i + 1} #### {i + 1}", 1.0), (f"{i}+1={i + 2} #### {i + 2}", 0.0)):
        node, _ = tree.add(up, text)
        node.terminal, node.reward, node.value = True, reward, 2 * reward - 1
    return tree.to_trajectories()


def test_step_apo_pairs_train_on_the_step_tokens_only(tiny):
    from oreo.trainers.step_apo import StepAPOConfig, StepAPOObjective

    model, tok = tiny
    objective = StepAPOObjective(copy.deepcopy(model), tok, StepAPOConfig(max_len=64), TrainConfig(),
                                 reference=copy.deepcopy(model))
    rows = [r for i in range(2) for r in plan_tree_rows(i)] + [record(9, "x", True)]   # a row of no tree: ignored
    pairs = objective.encode(rows)
    assert len(pairs) == 4   # per tree: a plan pair at the root, a solution pair below "Plan +1"
    for p in pairs:
        chosen, rejected = objective.records[p.chosen.index], objective.records[p.rejected.index]
        assert chosen.steps[:-1] == rejected.steps[:-1] and chosen.reward > rejected.reward
        for e, r in ((p.chosen, chosen), (p.rejected, rejected)):
            actions = tok.decode([t for t, a in zip(e.input_ids[1:], e.action_mask) if a])
            assert actions == r.steps[-1] + (tok.eos_token if r.meta["finished"] else "")   # EOS ends a solution
    solution = [p for p in pairs if objective.records[p.chosen.index].meta["finished"]]
    assert [(p.chosen.reward, p.rejected.reward) for p in solution] == [(pytest.approx(0.3), pytest.approx(-0.3))] * 2
    objective.prepare(torch.device("cpu"))
    loss = objective.losses(objective.collate(pairs))
    # at the reference h = 0: the loss is the mean of −log σ(−α ΔQ) over the pairs (ΔQ 1.0 and 0.6)
    expected = sum(-torch.nn.functional.logsigmoid(torch.tensor(-gap)).item() for gap in (1.0, 0.6, 1.0, 0.6)) / 4
    assert loss["loss"].item() == pytest.approx(expected, abs=1e-5)
    assert loss["q_gap"].item() == pytest.approx(0.8)
