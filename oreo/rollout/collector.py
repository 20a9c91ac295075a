"""Collection: N samples per problem, graded (single-turn tasks), or N episodes per game (agents,
``oreo.rollout.episodes``), written as trajectory records.

Collection is resumable: each finished chunk of problems is appended to a ``.partial.jsonl`` file, and
a restarted collection skips the chunks found there, so there are no duplicates and no gaps, and the
samples equal those of an uninterrupted run (chunk seeds do not depend on where a run stopped). When
every problem is done the records become one round of the buffer and the partial file is removed.

Under ``torchrun`` the chunks are shared out between ranks (chunk c goes to rank c mod world); each
rank writes its own partial file, and rank 0 turns the union into the round. Chunk seeds do not
depend on the rank, so the round is the same whatever the number of processes, and a collection
interrupted with one number of processes can resume with another.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from oreo.buffer import Buffer
from oreo.distributed import all_reduce_scalars, barrier, rank_world
from oreo.partial_files import append_lines, whole_lines
from oreo.progress import progress
from oreo.rollout.episodes import run_episodes, sampled_actions
from oreo.trajectory import Trajectory


def collect(task, problems, sampler, buffer: Buffer, *, n: int, temperature: float, seed: int,
            round: int | None = None, problems_per_chunk: int = 64, meta: dict | None = None) -> dict:
    """Sample ``n`` completions per problem (``n`` episodes per game for an agent task), grade them, and
    append them to ``buffer`` as one round.

    Problems are sampled in fixed chunks of ``problems_per_chunk`` consecutive problems, each with a
    seed derived from ``seed`` and the chunk's position, so a resumed collection draws exactly the
    samples an uninterrupted one would. Each finished chunk is one line of the partial file (written
    at once and flushed), so a kill leaves whole chunks and at most one cut line, which is ignored.

    Returns statistics: records, accuracy (agents: success rate), tokens generated and tokens/s.
    """
    settings = {"temperature": temperature, "seed": seed, **(meta or {})}  # every record's meta
    round_ = buffer.next_round() if round is None else round
    producer, unit = COLLECTORS[task.kind]
    return collect_in_chunks(buffer, problems, producer(task, sampler, n=n, temperature=temperature, round=round_,
                                                        meta=settings),
                             n=n, seed=seed, round=round_, problems_per_chunk=problems_per_chunk, unit=unit)


def sample_producer(task, sampler, *, n: int, temperature: float, round: int, meta: dict):
    """Single-turn tasks: ``n`` graded completions of each problem's prompt."""
    def produce(chunk, chunk_seed, bar):
        outs = sampler.generate([p.prompt for p in chunk], n=n, temperature=temperature, seed=chunk_seed,
                                progress=bar)
        records = [graded_record(task, problem, comp, k, round=round, meta=meta)
                   for problem, completions in zip(chunk, outs) for k, comp in enumerate(completions)]
        return records, sum(c.n_tokens for cs in outs for c in cs)
    return produce


def episode_producer(task, sampler, *, n: int, temperature: float, round: int, meta: dict):
    """Agent tasks: ``n`` sampled episodes of each game, every live episode's next turn in one batch."""
    def produce(chunk, chunk_seed, bar):
        act = sampled_actions(sampler, temperature=temperature)
        episodes = run_episodes(task, chunk, act, repeats=n, seed=chunk_seed, progress=bar)
        return [e.record(task, round=round, meta=meta) for e in episodes], sum(e.tokens for e in episodes)
    return produce


# task kind → (how a chunk of problems becomes trajectories, the progress bar's unit)
COLLECTORS = {"single_turn": (sample_producer, "sample"), "agent": (episode_producer, "episode")}


def graded_record(task, problem, comp, k: int, *, round: int, meta: dict) -> Trajectory:
    answer, correct = task.grade(problem, comp.text)
    correct = correct and comp.finished  # a cut completion is never rewarded
    return Trajectory(
        id=f"r{round}-{problem.id}-{k}", task=task.name, problem_id=problem.id,
        prompt=problem.prompt, steps=task.split_steps(comp.text), observations=[],
        reward=1.0 if correct else 0.0, correct=correct,
        answer=None if answer is None else str(answer),
        meta={"finished": comp.finished, "n_tokens": comp.n_tokens, **meta},
    )


def collect_in_chunks(buffer: Buffer, problems, produce, *, n: int, seed: int, round: int,
                      problems_per_chunk: int = 64, unit: str = "sample") -> dict:
    """The resumable, rank-sharded loop of ``collect``: ``produce(chunk, chunk_seed, bar)`` returns one
    chunk's trajectories (those of a problem carry its ``problem_id``) and the tokens generated."""
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("problem ids must be unique within one collection")
    if problems_per_chunk < 1:
        raise ValueError(f"problems_per_chunk must be >= 1, got {problems_per_chunk}")
    rank, world = rank_world()
    folder = Path(buffer.path)
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        # A kill between appending a round and removing its partial files leaves stale partials.
        for r in buffer.rounds():
            for stale in folder.glob(f"round_{r:03d}.partial*.jsonl"):
                stale.unlink()
    barrier()
    if round in buffer.rounds():
        raise FileExistsError(f"round {round} already exists in {buffer.path}; rounds are immutable")
    partials = f"round_{round:03d}.partial*.jsonl"
    done = _read_partials(folder, partials)
    chunks = [problems[c:c + problems_per_chunk] for c in range(0, len(problems), problems_per_chunk)]
    mine = [c for c in range(len(chunks)) if c % world == rank]
    n_todo = sum(p.id not in done for c in mine for p in chunks[c])
    tokens, start = 0, time.perf_counter()
    bar = progress(total=n_todo * n, desc=f"collect round {round}", unit=unit, leave=False, disable=rank != 0)
    partial = folder / f"round_{round:03d}.partial{'' if rank == 0 else f'.rank{rank}'}.jsonl"
    with append_lines(partial) as out:
        for c in mine:
            # Only a partial file written with another problems_per_chunk has part of a chunk done.
            chunk = [p for p in chunks[c] if p.id not in done]
            if not chunk:
                continue
            records, chunk_tokens = produce(chunk, seed * 7919 + c * problems_per_chunk, bar)
            tokens += chunk_tokens
            by_problem = {p.id: [] for p in chunk}
            for record in records:
                by_problem[record.problem_id].append(record.to_dict())
            items = [{"problem_id": pid, "records": rs} for pid, rs in by_problem.items()]
            out.write(json.dumps({"chunk": c, "problems": items}) + "\n")
            out.flush()
    bar.close()
    elapsed = time.perf_counter() - start
    totals = all_reduce_scalars({"tokens": tokens}, op="sum")  # also waits for every rank's chunks
    done = _read_partials(folder, partials)
    missing = [p.id for p in problems if p.id not in done]
    if missing:
        raise RuntimeError(f"collection round {round}: {len(missing)} problems missing from {folder}/{partials} "
                           f"(first: {missing[0]})")
    records = [r for p in problems for r in done[p.id]]
    barrier()  # every rank has read the partial files
    if rank == 0:
        buffer.append(records, round=round)
        for f in folder.glob(partials):
            f.unlink()
    barrier()
    return {"round": round, "records": len(records), "accuracy": sum(r.correct for r in records) / max(1, len(records)),
            "tokens": int(totals["tokens"]), "tokens_per_s": totals["tokens"] / max(elapsed, 1e-9)}


def _read_partials(folder: Path, pattern: str) -> dict[str, list[Trajectory]]:
    """Problems already collected, from every rank's partial file."""
    done = {}
    for path in sorted(folder.glob(pattern)):
        done.update(_read_partial(path))
    return done


def _read_partial(path: Path) -> dict[str, list[Trajectory]]:
    """Problems already collected; a line cut by a kill is ignored (its chunk is redone).

    A line is one chunk ``{"chunk", "problems": [{"problem_id", "records"}, ...]}`` (records as
    ``Trajectory.to_dict``; those of an older version, without the newer fields, read too); the older
    one-problem-per-line form ``{"problem_id", "records"}`` is read too.
    """
    done = {}
    for item in whole_lines(path):
        for entry in item["problems"] if "problems" in item else [item]:
            done[entry["problem_id"]] = [Trajectory.from_dict(r, str(path)) for r in entry["records"]]
    return done
