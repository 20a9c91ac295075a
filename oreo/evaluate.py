"""Greedy evaluation: accuracy on a split, with a per-problem jsonl (prompt, response, answer, gold, correct).

Under ``torchrun`` the problems are shared out between ranks in blocks of the sampler's batch size
(the batches a single process would make), the rows are gathered, and rank 0 writes the file.
"""
from __future__ import annotations

import json
from pathlib import Path

from oreo.distributed import all_gather_objects, rank_world
from oreo.progress import progress


def evaluate_greedy(task, problems, sampler, *, out_path: str | Path | None = None, desc: str = "evaluate") -> dict:
    """Greedy accuracy of ``sampler``'s model on ``problems``. A completion cut by the token limit is wrong."""
    rank, world = rank_world()
    size = max(1, getattr(sampler, "batch_size", len(problems)))
    blocks = [list(range(i, min(i + size, len(problems)))) for i in range(0, len(problems), size)]
    mine = [i for b in blocks[rank::world] for i in b]
    bar = progress(total=len(mine), desc=desc, unit="problem", leave=False, disable=rank != 0)
    rows = []
    for block in blocks[rank::world]:
        outs = sampler.generate([problems[i].prompt for i in block], n=1, temperature=0.0, progress=bar)
        for i, (comp,) in zip(block, outs):
            problem = problems[i]
            answer, correct = task.grade(problem, comp.text)
            rows.append((i, {"problem_id": problem.id, "prompt": problem.prompt, "response": comp.text,
                             "answer": answer, "gold": problem.answer, "correct": bool(correct and comp.finished),
                             "finished": comp.finished, "n_tokens": comp.n_tokens}))
    bar.close()
    rows = [row for _, row in sorted((r for part in all_gather_objects(rows) for r in part), key=lambda r: r[0])]
    if out_path is not None and rank == 0:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    n = max(1, len(rows))
    return {"accuracy": sum(r["correct"] for r in rows) / n, "n": len(rows),
            "mean_tokens": sum(r["n_tokens"] for r in rows) / n}
