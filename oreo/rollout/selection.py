"""Which collected trajectories train: the reference's balanced selection (spec §4.2)."""
from __future__ import annotations

import random
from collections import defaultdict

from oreo.trajectory import Trajectory


def balanced_selection(records: list[Trajectory], k: int, seed: int = 0) -> list[Trajectory]:
    """Per problem, at most ``k`` correct and ``k`` incorrect samples, chosen at random (seeded).

    As the reference: with ``c`` correct and ``w`` incorrect samples, keep ``min(c, max(w, 1), k)``
    correct ones and ``min(w, k)`` incorrect ones, so positives never outnumber negatives except that
    one positive is kept when a problem has no negative. Records keep their input order.
    """
    if k < 1:
        raise ValueError(f"balanced selection needs k >= 1, got {k}")
    by_problem: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_problem[r.problem_id].append(i)
    rng = random.Random(seed)
    keep: set[int] = set()
    for problem_id in sorted(by_problem):
        idx = by_problem[problem_id]
        right = [i for i in idx if records[i].correct]
        wrong = [i for i in idx if not records[i].correct]
        n_right = min(len(right), max(len(wrong), 1), k)
        keep.update(rng.sample(right, n_right))
        keep.update(rng.sample(wrong, min(len(wrong), k)))
    return [r for i, r in enumerate(records) if i in keep]
