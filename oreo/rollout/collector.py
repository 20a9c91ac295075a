"""Single-turn collection: N samples per problem, graded, written as trajectory records.

Collection is resumable: finished problems are appended to a ``.partial.jsonl`` file as they complete,
and a restarted collection skips them, so there are no duplicates and no gaps. When every problem is
done the records become one round of the buffer and the partial file is removed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from oreo.progress import progress

from oreo.buffer import Buffer


def collect(task, problems, sampler, buffer: Buffer, *, n: int, temperature: float, seed: int,
            round: int | None = None, problems_per_chunk: int = 64, meta: dict | None = None) -> dict:
    """Sample ``n`` completions per problem, grade them, and append them to ``buffer`` as one round.

    Returns statistics: records, accuracy, tokens generated and tokens/s.
    """
    round = buffer.next_round() if round is None else round
    Path(buffer.path).mkdir(parents=True, exist_ok=True)
    partial = Path(buffer.path) / f"round_{round:03d}.partial.jsonl"
    done = _read_partial(partial)
    todo = [p for p in problems if p.id not in done]
    tokens, start = 0, time.perf_counter()
    bar = progress(total=len(todo) * n, desc=f"collect round {round}", unit="sample", leave=False)
    with partial.open("a") as out:
        for c in range(0, len(todo), problems_per_chunk):
            chunk = todo[c:c + problems_per_chunk]
            chunk_seed = seed * 7919 + problems.index(chunk[0])
            outs = sampler.generate([p.prompt for p in chunk], n=n, temperature=temperature, seed=chunk_seed,
                                    progress=bar)
            for problem, completions in zip(chunk, outs):
                records = []
                for k, comp in enumerate(completions):
                    answer, correct = task.grade(problem, comp.text)
                    correct = correct and comp.finished
                    tokens += comp.n_tokens
                    records.append({
                        "id": f"r{round}-{problem.id}-{k}", "task": task.name, "problem_id": problem.id,
                        "prompt": problem.prompt, "steps": task.split_steps(comp.text), "observations": [],
                        "reward": 1.0 if correct else 0.0, "correct": correct,
                        "answer": None if answer is None else str(answer),
                        "meta": {"finished": comp.finished, "temperature": temperature, "seed": seed,
                                 "n_tokens": comp.n_tokens, **(meta or {})},
                    })
                out.write(json.dumps({"problem_id": problem.id, "records": records}) + "\n")
                done[problem.id] = records
            out.flush()
    bar.close()
    elapsed = time.perf_counter() - start
    records = [r for p in problems for r in done[p.id]]
    buffer.append(records, round=round)
    partial.unlink()
    return {"round": round, "records": len(records), "accuracy": sum(r["correct"] for r in records) / max(1, len(records)),
            "tokens": tokens, "tokens_per_s": tokens / max(elapsed, 1e-9)}


def _read_partial(path: Path) -> dict[str, list[dict]]:
    """Problems already collected; a last line cut by a kill is ignored (that problem is redone)."""
    done = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[item["problem_id"]] = item["records"]
    return done
