"""Greedy evaluation: accuracy on a split, with a per-problem jsonl (prompt, response, answer, gold, correct)."""
from __future__ import annotations

import json
from pathlib import Path

from oreo.progress import progress


def evaluate_greedy(task, problems, sampler, *, out_path: str | Path | None = None, desc: str = "evaluate") -> dict:
    """Greedy accuracy of ``sampler``'s model on ``problems``. A completion cut by the token limit is wrong."""
    bar = progress(total=len(problems), desc=desc, unit="problem", leave=False)
    outs = sampler.generate([p.prompt for p in problems], n=1, temperature=0.0, progress=bar)
    bar.close()
    rows = []
    for problem, (comp,) in zip(problems, outs):
        answer, correct = task.grade(problem, comp.text)
        rows.append({"problem_id": problem.id, "prompt": problem.prompt, "response": comp.text,
                     "answer": answer, "gold": problem.answer, "correct": bool(correct and comp.finished),
                     "finished": comp.finished, "n_tokens": comp.n_tokens})
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    n = max(1, len(rows))
    return {"accuracy": sum(r["correct"] for r in rows) / n, "n": len(rows),
            "mean_tokens": sum(r["n_tokens"] for r in rows) / n}
