"""The process value model: its loss against a hand-computed case, where the encoder puts each step's
target, and a PRM trained on a search tree's inferred targets that fits them."""
import math

import pytest
import torch

from oreo import losses
from oreo.batch import collate
from oreo.encode import Encoder
from oreo.models import load_policy
from oreo.search.process_values import inferred_values
from oreo.search.tree import Tree
from oreo.trainers.common import TrainConfig
from oreo.trainers.prm import PRMConfig, PRMObjective
from oreo.trajectory import Trajectory

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
NAN = float("nan")


def test_process_value_loss_by_hand():
    values = torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.3, 0.3]], requires_grad=True)
    targets = torch.tensor([[NAN, 0.0, 1.0], [NAN, NAN, 0.5]])
    loss = losses.process_value_loss(values, targets)
    assert loss.item() == pytest.approx((0.2 ** 2 + 0.1 ** 2 + 0.2 ** 2) / 3)
    loss.backward()
    expected = torch.tensor([[0.0, 2 * 0.2 / 3, 2 * -0.1 / 3], [0.0, 0.0, 2 * -0.2 / 3]])
    torch.testing.assert_close(values.grad, expected)
    none = torch.full((1, 3), NAN)
    empty = losses.process_value_loss(values, none)
    assert empty.item() == 0.0 and empty.requires_grad


def test_each_steps_target_sits_at_its_last_token():
    _, tok = load_policy("tiny", tiny=TINY, seed=0)
    record = Trajectory(id="r", task="t", problem_id="p", prompt="1+2+3?\n", steps=["1+2=3\n", "3+3=6\n", "#### 6"],
                        reward=1.0, step_values=[1 / 3, 2 / 3, 1.0])
    e = Encoder(tok, granularity="step", max_len=512).encode(record)
    assert [tok.decode([e.input_ids[t]]) for t in e.step_ends] == ["\n", "\n", "6"]
    assert e.input_ids[-1] == tok.eos_token_id and e.step_ends[-1] == len(e.input_ids) - 2  # before the EOS
    batch = collate([e], tok.pad_token_id, "left", step_targets=[record.step_values])
    row = batch.value_targets[0]
    pad = len(row) - len(e.input_ids)
    assert [row[pad + t].item() for t in e.step_ends] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert int((~row.isnan()).sum()) == 3


def tree_rows() -> list[Trajectory]:
    """Paths of a small tree with targets: two correct answers, wrong branches, an unfinished leaf."""
    tree = Tree("t0", "p0", "2+3+4?\n", task="arithmetic")
    a, _ = tree.add(tree.root, "2+3=5\n")
    for steps, reward in ((["5+4=9\n", "#### 9"], 1.0), (["5+4=8\n", "#### 8"], 0.0), (["#### 5"], 0.0)):
        node = a
        for s in steps:
            node, _ = tree.add(node, s)
        node.terminal, node.reward = True, reward
    wrong, _ = tree.add(tree.root, "2+3=6\n")
    end, _ = tree.add(wrong, "#### 6")
    end.terminal, end.reward = True, 0.0
    tree.add(tree.root, "2+4=6\n")   # never finished: no target
    targets = inferred_values(tree)
    rows = []
    for leaf in tree.leaves():
        path = tree.path(leaf)
        if all(n.id in targets for n in path):
            rows.append(Trajectory(id=f"t0-{leaf.id}", task="arithmetic", problem_id="p0", prompt=tree.prompt,
                                   steps=[n.step for n in path], reward=leaf.reward or 0.0,
                                   step_values=[targets[n.id] for n in path]))
    return rows


def test_a_prm_fits_the_inferred_targets():
    policy, tok = load_policy("tiny", tiny=TINY, seed=0)
    rows = tree_rows()
    assert len(rows) == 4 and rows[0].step_values == pytest.approx([1 / 3, 2 / 3, 1.0])
    objective = PRMObjective(policy, tok, PRMConfig(max_len=64),
                             TrainConfig(epochs=60, batch_size=4, micro_batch_size=4, lr=3e-3, warmup_ratio=0.0))
    data = objective.encode(rows + [Trajectory(id="x", task="t", problem_id="q", prompt="?", steps=["a"], reward=0.0)])
    assert len(data) == 4  # the row without targets is dropped
    batch = objective.collate(data)

    def mse():
        with torch.no_grad():
            return losses.process_value_loss(objective.value(batch.input_ids, batch.attention_mask),
                                             batch.value_targets).item()

    before = mse()
    info = objective.fit(rows)
    assert info["steps"] == 60 and math.isfinite(before)
    assert mse() < 0.1 * before


def test_rest_mcts_keeps_the_policy_traces_the_value_filter_accepts():
    from oreo.rest_mcts import trace_kept
    from oreo.run_config import RestConfig
    from oreo.trajectory import Trajectory

    def row(steps, values):
        return Trajectory(id="t", task="toy", problem_id="0", prompt="q", steps=steps, reward=1.0, correct=True,
                          step_values=values)

    assert trace_kept(row(["a\n", "#### 1"], [0.9, 0.1]), RestConfig())   # no filter: every correct path
    strict = RestConfig(value_filter=0.2, min_chars=5)
    assert trace_kept(row(["abc\n", "#### 1"], [0.1, 0.2]), strict)        # the finished solution's value counts
    assert not trace_kept(row(["abc\n", "#### 1"], [0.9, 0.19]), strict)
    assert trace_kept(row(["#### 1"], [0.9]), strict)
    assert not trace_kept(row(["#### 1"], [0.9]), RestConfig(min_chars=7))  # 6 characters: too short
