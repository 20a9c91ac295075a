"""Seeded batching: every example once per epoch, resumable mid-run, and grouped by length on request."""
import random

from oreo.trainers.common import TrainConfig, micro_batches


def batches(n, cfg, total, start=0, lengths=None):
    out = {}
    for step, _, idx in micro_batches(n, cfg, total, start_step=start, lengths=lengths):
        out.setdefault(step, []).extend(idx)
    return out


def padded_fraction(steps, lengths):
    real = sum(lengths[i] for b in steps.values() for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in steps.values())
    return 1 - real / padded


def test_grouped_batches_cover_each_epoch_once_with_less_padding_and_resume_exactly():
    rng = random.Random(0)
    lengths = [rng.randint(100, 450) for _ in range(1000)]
    plain = TrainConfig(batch_size=8, micro_batch_size=4, seed=3)
    grouped = TrainConfig(batch_size=8, micro_batch_size=4, seed=3, group_by_length=True)
    per_epoch = 1000 // 8
    a = batches(1000, plain, 2 * per_epoch, lengths=lengths)
    g = batches(1000, grouped, 2 * per_epoch, lengths=lengths)
    for steps in (a, g):
        for epoch in range(2):
            seen = [i for s in range(epoch * per_epoch, (epoch + 1) * per_epoch) for i in steps[s]]
            assert sorted(seen) == list(range(1000))
    assert padded_fraction(a, lengths) > 0.3 and padded_fraction(g, lengths) < 0.03
    # batch order is shuffled: the longest batch is not always first
    firsts = [max(lengths[i] for i in g[s]) for s in range(per_epoch)]
    assert firsts != sorted(firsts, reverse=True)
    assert {s: b for s, b in g.items() if s >= 77} == batches(1000, grouped, 2 * per_epoch, start=77, lengths=lengths)
    assert batches(1000, grouped, per_epoch) == batches(1000, plain, per_epoch)  # no lengths: not grouped
