"""Single-turn collection: N samples per problem, graded, written as trajectory records.

Collection is resumable: each finished chunk of problems is appended to a ``.partial.jsonl`` file, and
a restarted collection skips the chunks found there, so there are no duplicates and no gaps, and the
samples equal those of an uninterrupted run (chunk seeds do not depend on where a run stopped). When
every problem is done the records become one round of the buffer and the partial file is removed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from oreo.buffer import Buffer
from oreo.progress import progress


def collect(task, problems, sampler, buffer: Buffer, *, n: int, temperature: float, seed: int,
            round: int | None = None, problems_per_chunk: int = 64, meta: dict | None = None) -> dict:
    """Sample ``n`` completions per problem, grade them, and append them to ``buffer`` as one round.

    Problems are sampled in fixed chunks of ``problems_per_chunk`` consecutive problems, each with a
    seed derived from ``seed`` and the chunk's position, so a resumed collection draws exactly the
    samples an uninterrupted one would. Each finished chunk is one line of the partial file (written
    at once and flushed), so a kill leaves whole chunks and at most one cut line, which is ignored.

    Returns statistics: records, accuracy, tokens generated and tokens/s.
    """
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("problem ids must be unique within one collection")
    if problems_per_chunk < 1:
        raise ValueError(f"problems_per_chunk must be >= 1, got {problems_per_chunk}")
    Path(buffer.path).mkdir(parents=True, exist_ok=True)
    present = buffer.rounds()
    # A kill between appending a round and removing its partial file leaves a stale partial.
    for r in present:
        (Path(buffer.path) / f"round_{r:03d}.partial.jsonl").unlink(missing_ok=True)
    round = buffer.next_round() if round is None else round
    if round in present:
        raise FileExistsError(f"round {round} already exists in {buffer.path}; rounds are immutable")
    partial = Path(buffer.path) / f"round_{round:03d}.partial.jsonl"
    done = _read_partial(partial)
    chunks = [problems[c:c + problems_per_chunk] for c in range(0, len(problems), problems_per_chunk)]
    n_todo = sum(p.id not in done for p in problems)
    tokens, start = 0, time.perf_counter()
    bar = progress(total=n_todo * n, desc=f"collect round {round}", unit="sample", leave=False)
    with partial.open("a") as out:
        for c, chunk in enumerate(chunks):
            # Only a partial file written with another problems_per_chunk has part of a chunk done.
            chunk = [p for p in chunk if p.id not in done]
            if not chunk:
                continue
            chunk_seed = seed * 7919 + c * problems_per_chunk
            outs = sampler.generate([p.prompt for p in chunk], n=n, temperature=temperature, seed=chunk_seed,
                                    progress=bar)
            items = []
            for problem, completions in zip(chunk, outs):
                records = []
                for k, comp in enumerate(completions):
                    answer, correct = task.grade(problem, comp.text)
                    correct = correct and comp.finished  # a cut completion is never rewarded
                    tokens += comp.n_tokens
                    records.append({
                        "id": f"r{round}-{problem.id}-{k}", "task": task.name, "problem_id": problem.id,
                        "prompt": problem.prompt, "steps": task.split_steps(comp.text), "observations": [],
                        "reward": 1.0 if correct else 0.0, "correct": correct,
                        "answer": None if answer is None else str(answer),
                        "meta": {"finished": comp.finished, "temperature": temperature, "seed": seed,
                                 "n_tokens": comp.n_tokens, **(meta or {})},
                    })
                items.append({"problem_id": problem.id, "records": records})
            out.write(json.dumps({"chunk": c, "problems": items}) + "\n")
            out.flush()
            for item in items:
                done[item["problem_id"]] = item["records"]
    bar.close()
    elapsed = time.perf_counter() - start
    records = [r for p in problems for r in done[p.id]]
    buffer.append(records, round=round)
    partial.unlink()
    return {"round": round, "records": len(records), "accuracy": sum(r["correct"] for r in records) / max(1, len(records)),
            "tokens": tokens, "tokens_per_s": tokens / max(elapsed, 1e-9)}


def _read_partial(path: Path) -> dict[str, list[dict]]:
    """Problems already collected; a line cut by a kill is ignored (its chunk is redone).

    A line is one chunk ``{"chunk", "problems": [{"problem_id", "records"}, ...]}``; the older
    one-problem-per-line form ``{"problem_id", "records"}`` is read too.
    """
    done = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        for entry in item["problems"] if "problems" in item else [item]:
            done[entry["problem_id"]] = entry["records"]
    return done
