"""Evaluation: greedy accuracy on a split, with a per-problem jsonl (prompt, response, answer, gold,
correct); and from n samples per problem, pass@k (unbiased estimator) and maj@k (majority vote).

Under ``torchrun`` the problems are shared out between ranks in blocks of the sampler's batch size
(the batches a single process would make), the rows are gathered, and rank 0 writes the file.
"""
from __future__ import annotations

import json
from collections import Counter
from math import comb
from pathlib import Path

from oreo.distributed import all_gather_objects, rank_world
from oreo.progress import progress


def _my_blocks(n_items: int, block: int) -> list[tuple[int, list[int]]]:
    """``(block number, item indices)`` of this rank: blocks of ``block`` consecutive items, dealt
    round-robin to the ranks."""
    rank, world = rank_world()
    block = max(1, block)
    starts = range(0, n_items, block)
    return [(b, list(range(s, min(s + block, n_items)))) for b, s in enumerate(starts) if b % world == rank]


def _gather_in_order(rows: list[tuple[int, dict]]) -> list[dict]:
    """Every rank's ``(index, row)`` pairs, as one list of rows in index order."""
    gathered = (r for part in all_gather_objects(rows) for r in part)
    return [row for _, row in sorted(gathered, key=lambda r: r[0])]


def evaluate_greedy(task, problems, sampler, *, out_path: str | Path | None = None, desc: str = "evaluate") -> dict:
    """Greedy accuracy of ``sampler``'s model on ``problems``. A completion cut by the token limit is wrong."""
    rank, _ = rank_world()
    mine = _my_blocks(len(problems), getattr(sampler, "batch_size", len(problems)))
    bar = progress(total=sum(len(b) for _, b in mine), desc=desc, unit="problem", leave=False, disable=rank != 0)
    rows = []
    for _, block in mine:
        outs = sampler.generate([problems[i].prompt for i in block], n=1, temperature=0.0, progress=bar)
        for i, (comp,) in zip(block, outs):
            problem = problems[i]
            answer, correct = task.grade(problem, comp.text)
            rows.append((i, {"problem_id": problem.id, "prompt": problem.prompt, "response": comp.text,
                             "answer": answer, "gold": problem.answer, "correct": bool(correct and comp.finished),
                             "finished": comp.finished, "n_tokens": comp.n_tokens}))
    bar.close()
    rows = _gather_in_order(rows)
    if out_path is not None and rank == 0:
        _write_rows(out_path, rows)
    n = max(1, len(rows))
    return {"accuracy": sum(r["correct"] for r in rows) / n, "n": len(rows),
            "mean_tokens": sum(r["n_tokens"] for r in rows) / n}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 − C(n−c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(answers: list, correct: list[bool], key=str) -> bool:
    """Whether the most frequent answer (by ``key``; ties to the earliest; no answer never wins) is correct."""
    keys = [None if a is None else key(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return False
    best = max(counts.values())
    winner = next(k for k in keys if k is not None and counts[k] == best)
    return correct[keys.index(winner)]


def evaluate_sampled(task, problems, sampler, *, n: int, temperature: float, ks: list[int], seed: int = 0,
                     out_path: str | Path | None = None, desc: str = "evaluate") -> dict:
    """``pass@k`` and ``maj@k`` for each k in ``ks`` (k <= n) from ``n`` samples per problem at
    ``temperature``; rows (all samples, answers, correctness) go to ``out_path``. A cut sample is wrong.
    Under ``torchrun`` the problems are shared out by blocks with block-seeded sampling, so the samples
    do not depend on the number of processes."""
    ks = [k for k in ks if 1 <= k <= n]
    rank, _ = rank_world()
    mine = _my_blocks(len(problems), getattr(sampler, "batch_size", n * len(problems)) // n)
    bar = progress(total=sum(len(b) for _, b in mine) * n, desc=desc, unit="sample", leave=False, disable=rank != 0)
    key = getattr(task, "answer_key", str)
    rows = []
    for b, block in mine:
        outs = sampler.generate([problems[i].prompt for i in block], n=n, temperature=temperature,
                                seed=seed * 7919 + b, progress=bar)
        for i, completions in zip(block, outs):
            graded = [task.grade(problems[i], c.text) for c in completions]
            answers = [a for a, _ in graded]
            correct = [bool(ok and c.finished) for (_, ok), c in zip(graded, completions)]
            rows.append((i, {"problem_id": problems[i].id, "gold": problems[i].answer,
                             "responses": [c.text for c in completions], "answers": answers, "correct": correct}))
    bar.close()
    rows = _gather_in_order(rows)
    if out_path is not None and rank == 0:
        _write_rows(out_path, rows)
    m = max(1, len(rows))
    out = {}
    for k in ks:
        out[f"pass@{k}"] = sum(pass_at_k(n, sum(r["correct"]), k) for r in rows) / m
        out[f"maj@{k}"] = sum(majority_correct(r["answers"][:k], r["correct"][:k], key) for r in rows) / m
    return out


def _write_rows(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
