"""Evaluation: greedy accuracy on a split, with a per-problem jsonl (prompt, response, answer, gold,
correct); from n samples per problem, pass@k (unbiased estimator) and maj@k (majority vote); any
test-time search strategy (oreo.search) with the tokens it spent; and, for agent tasks, the success
rate of episodes played greedily or with value-guided best-of-K actions, with a per-episode jsonl.

Under ``torchrun`` the problems are shared out between ranks in blocks of the sampler's batch size
(the batches a single process would make), the rows are gathered, and rank 0 writes the file.

``python -m oreo.evaluate checkpoint=DIR search=beam search.width=5 [+experiment=NAME]`` evaluates a
saved policy (and value) with a search strategy on ``evaluate.splits`` and writes
``RUN_DIR/search/TAG/{metrics.json, SPLIT.jsonl}``; an interrupted evaluation resumes by block.
"""
from __future__ import annotations

import json
import time
from math import comb
from pathlib import Path

import hydra
from omegaconf import DictConfig

from oreo.atomic_write import write_atomically
from oreo.checkpoint import weights_stamp
from oreo.distributed import all_gather_objects, barrier, rank_world
from oreo.partial_files import append_lines, whole_lines
from oreo.progress import progress
from oreo.run_config import CONF_DIR, RunConfig, as_dict, run_config
from oreo.search.strategies import majority_index


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


def evaluate_episodes(task, games, act, *, out_path: str | Path, seed: int = 0, games_per_batch: int = 64,
                      desc: str = "episodes", fingerprint: dict | None = None, plan=None) -> dict:
    """Success rate of the agent ``act`` (``oreo.rollout.episodes``) on ``games``, one episode each, with
    mean turns and tokens, and success per goal kind. Rows: game, kind, turns, success, invalid, actions.
    With ``plan(games, seed) → [(turns, tokens)]`` (a tree search), each episode first plays the turns its
    game's plan chose, and its tokens include the plan's. Resumes by block of ``games_per_batch`` games, as
    ``evaluate_search`` does."""
    from oreo.rollout.episodes import run_episodes
    from oreo.tasks.agent import parse_action

    def play(b, block, bar):
        block_games = [games[i] for i in block]
        plans = plan(block_games, seed * 7919 + b) if plan is not None else [([], 0)] * len(block)
        episodes = run_episodes(task, block_games, act, seed=seed * 7919 + b, progress=bar,
                                prefixes=[turns for turns, _ in plans])
        return [(i, {"game": e.game.id, "kind": e.game.kind, "turns": len(e.steps), "success": e.won,
                     "invalid": e.invalid, "tokens": e.tokens + spent, "planned_turns": len(turns),
                     "actions": [parse_action(t) for t in e.steps],
                     "last_observation": e.observations[-1] if e.observations else None})
                for i, e, (turns, spent) in zip(block, episodes, plans)]

    rows, _ = _run_blocks(play, len(games), games_per_batch, out_path=out_path, fingerprint=fingerprint,
                          desc=desc, unit="episode")
    n = max(1, len(rows))
    kinds = sorted({r["kind"] for r in rows})
    return {"success": sum(r["success"] for r in rows) / n, "n": len(rows),
            "mean_turns": sum(r["turns"] for r in rows) / n, "mean_tokens": sum(r["tokens"] for r in rows) / n,
            "invalid": sum(r["invalid"] for r in rows) / n,
            "by_kind": {k: sum(r["success"] for r in rows if r["kind"] == k) / sum(r["kind"] == k for r in rows)
                        for k in kinds}}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 − C(n−c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(answers: list, correct: list[bool], key=str) -> bool:
    """Whether the most frequent answer (by ``key``; ties to the earliest; no answer never wins) is correct."""
    pick = majority_index([None if a is None else key(a) for a in answers])
    return pick is not None and correct[pick]


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


def evaluate_search(task, problems, searcher, *, out_path: str | Path, seed: int = 0, desc: str = "search",
                    fingerprint: dict | None = None) -> dict:
    """Accuracy of ``searcher``'s choices on ``problems``, with generated tokens per problem and wall time.
    Rows: problem, response, answer, gold, correct, value, tokens, samples. Problems go in blocks of
    ``searcher.cfg.problems_per_batch`` and an interrupted evaluation resumes by block (``_run_blocks``)."""
    def solve(b, block, bar):
        rows = []
        for i, choice in zip(block, searcher.solve([problems[i] for i in block], seed=seed * 7919 + b)):
            problem = problems[i]
            answer, correct = task.grade(problem, choice.response) if choice.response is not None else (None, False)
            rows.append((i, {"problem_id": problem.id, "prompt": problem.prompt, "response": choice.response,
                             "answer": answer, "gold": problem.answer, "correct": bool(correct),
                             "value": choice.value, "tokens": choice.tokens, "samples": choice.samples}))
        return rows

    rows, wall = _run_blocks(solve, len(problems), searcher.cfg.problems_per_batch, out_path=out_path,
                             fingerprint=fingerprint, desc=desc, unit="problem")
    n = max(1, len(rows))
    tokens = sum(r["tokens"] for r in rows)
    values = [r["value"] for r in rows if r["value"] is not None]
    return {"accuracy": sum(r["correct"] for r in rows) / n, "n": len(rows), "mean_tokens": tokens / n,
            "mean_samples": sum(r["samples"] for r in rows) / n,
            "answered": sum(r["response"] is not None for r in rows) / n,
            "mean_value": sum(values) / len(values) if values else None,
            "wall_s": wall, "tokens_per_s": tokens / max(wall, 1e-9)}


def _run_blocks(solve, n_items: int, block_size: int, *, out_path: str | Path, fingerprint: dict | None,
                desc: str, unit: str) -> tuple[list[dict], float]:
    """Runs ``solve(block number, item indices, bar) → [(index, row)]`` on this rank's blocks (it may
    advance the progress ``bar`` item by item); returns every rank's rows in index order, written to
    ``out_path``, and the total wall time.

    Blocks are seeded by their number, so results do not depend on resuming or on the number of ranks.
    Each finished block is appended to ``OUT.partial[.rankR].jsonl`` with ``fingerprint`` (what must
    match to reuse it: settings, checkpoint, seed); a rerun skips the matching blocks found there. The
    partials are removed once ``out_path`` is written.
    """
    out_path = Path(out_path)
    rank, _ = rank_world()
    partials = sorted(out_path.parent.glob(f"{out_path.stem}.partial*.jsonl"))
    done = {item["block"]: item for path in partials for item in whole_lines(path)
            if item.get("fingerprint") == fingerprint}
    mine = _my_blocks(n_items, block_size)
    todo = [(b, block) for b, block in mine if b not in done]
    bar = progress(total=sum(len(b) for _, b in todo), desc=desc, unit=unit, leave=False, disable=rank != 0)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f"{out_path.stem}.partial{'' if rank == 0 else f'.rank{rank}'}.jsonl")
    with append_lines(partial) as out:
        for b, block in todo:
            start, shown = time.perf_counter(), bar.n
            item = {"block": b, "rows": solve(b, block, bar), "wall_s": time.perf_counter() - start,
                    "fingerprint": fingerprint}
            out.write(json.dumps(item, default=str) + "\n")
            out.flush()
            done[b] = item
            bar.update(len(block) - (bar.n - shown))
    bar.close()
    mine_done = [done[b] for b, _ in mine]
    rows = _gather_in_order([tuple(r) for item in mine_done for r in item["rows"]])
    wall = sum(all_gather_objects(sum(item["wall_s"] for item in mine_done)))
    if rank == 0:
        _write_rows(out_path, rows)
    barrier()
    if rank == 0:
        for path in out_path.parent.glob(f"{out_path.stem}.partial*.jsonl"):
            path.unlink()
    return rows, wall


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """``(policy folder, value folder or None)`` of a checkpoint: an OREO output (``policy/`` and
    ``value/`` inside) or a policy folder alone."""
    path = Path(path)
    if (path / "policy").is_dir():
        return path / "policy", (path / "value" if (path / "value").is_dir() else None)
    if (path / "config.json").exists():
        return path, None
    raise FileNotFoundError(f"checkpoint {path}: expected an OREO checkpoint (policy/ and value/ inside, e.g. "
                            f"RUN_DIR/checkpoints/oreo) or a Hugging Face policy folder")


def search_run(cfg: RunConfig) -> dict:
    """Evaluate ``cfg.checkpoint`` with ``cfg.search`` on ``cfg.evaluate.splits``; returns split → metrics."""
    from oreo.encode import Encoder
    from oreo.runtime import build_sampler, close_sampler, pick_device, quiet_library_progress_bars
    from oreo.search.strategies import NEEDS_VALUE, Searcher
    from oreo.search.value import StepLikelihoodScorer, ValueScorer, load_value_model
    from oreo.tasks import make_task

    quiet_library_progress_bars()
    search = cfg.search
    device = pick_device(cfg.device)
    policy_dir, value_dir = resolve_checkpoint(cfg.checkpoint or Path(cfg.run_dir) / "checkpoints" / "oreo")
    if cfg.value not in (None, "policy", "verifier"):
        value_dir = Path(cfg.value)
    task = make_task(cfg.task)
    sampler = build_sampler(cfg, policy_dir, cfg.evaluate, device)
    scorer = None
    if cfg.value == "policy":   # the policy's own step likelihood (oreo.search.value.StepLikelihoodScorer)
        check_likelihood_scoring(cfg, sampler, task)
        scorer = StepLikelihoodScorer(sampler.model, Encoder.unbounded(sampler.tokenizer),
                                      batch_size=search.value_batch_size)
        value_dir = "policy"
    elif cfg.value == "verifier":   # a logistic readout of the policy's step log-probs (oreo.search.verifier)
        scorer = verifier_scorer(cfg, policy_dir, sampler, task)
        value_dir = Path(cfg.run_dir) / "checkpoints" / "verifier"
    elif value_dir is not None:
        value = load_value_model(value_dir, dtype=cfg.model.dtype, policy=getattr(sampler, "model", None))
        scorer = ValueScorer(value.to(device), Encoder.unbounded(sampler.tokenizer),
                             batch_size=search.value_batch_size)
    elif search.strategy in NEEDS_VALUE:
        raise ValueError(f"search.strategy={search.strategy} needs a value model, and {cfg.checkpoint} has no value/; "
                         f"give one with value=PATH (e.g. RUN_DIR/checkpoints/prm)")
    # results scored by another value model than the checkpoint's go to a folder of their own
    tag = search.tag if cfg.value is None else f"{search.tag}-{Path(cfg.value).name}"
    out_dir = Path(cfg.run_dir) / "search" / tag
    metrics_path = out_dir / "metrics.json"
    # What must match for earlier results in out_dir to be reused: the settings, the checkpoint, the seed.
    fingerprint = {"search": as_dict(search), "policy": str(policy_dir), "value": str(value_dir), "seed": cfg.seed,
                   "max_new_tokens": cfg.evaluate.max_new_tokens,
                   "weights": [weights_stamp(policy_dir), None if cfg.value == "policy" else weights_stamp(value_dir)]}
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() and cfg.resume else {}
    if metrics.get("fingerprint") != fingerprint:
        metrics = {}
    for split in cfg.evaluate.splits:
        if split in metrics:
            continue
        if task.kind == "agent":
            metrics[split] = evaluate_episodes(task, task.problems(split), agent_act(search, sampler, scorer),
                                               out_path=out_dir / f"{split}.jsonl", seed=cfg.seed,
                                               games_per_batch=search.problems_per_batch,
                                               desc=f"{search.tag}/{split}", fingerprint=fingerprint,
                                               plan=agent_plan(search, task, sampler, scorer))
        else:
            metrics[split] = evaluate_search(task, task.problems(split), Searcher(search, task, sampler, scorer),
                                             out_path=out_dir / f"{split}.jsonl", seed=cfg.seed,
                                             desc=f"{search.tag}/{split}", fingerprint=fingerprint)
        metrics["fingerprint"] = fingerprint
        if rank_world()[0] == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(metrics_path, json.dumps(metrics, indent=2))
    close_sampler(sampler)
    if rank_world()[0] == 0:
        for split in cfg.evaluate.splits:
            m = metrics[split]
            if "success" in m:
                print(f"{search.tag:<18} {split:<8} success {100 * m['success']:5.1f}%  "
                      f"turns/episode {m['mean_turns']:5.1f}  tokens/episode {m['mean_tokens']:8.1f}")
            else:
                print(f"{search.tag:<18} {split:<8} accuracy {100 * m['accuracy']:5.1f}%  "
                      f"tokens/problem {m['mean_tokens']:8.1f}  wall {m['wall_s']:7.1f}s")
        print(f"results: {metrics_path}")
    return {s: metrics[s] for s in cfg.evaluate.splits}


def check_likelihood_scoring(cfg: RunConfig, sampler, task) -> None:
    if not hasattr(sampler, "model") or task.kind == "agent":
        raise ValueError(f"value={cfg.value} scores single-turn responses with the policy's own log-probs: it needs "
                         f"sampler.backend=hf and a task that is not an agent task")


def verifier_scorer(cfg: RunConfig, policy_dir: Path, sampler, task):
    """``value=verifier``: the likelihood verifier of the searching policy, fitted on RUN_DIR's buffer once (and
    again when the policy changes), kept in RUN_DIR/checkpoints/verifier."""
    from oreo.buffer import Buffer
    from oreo.encode import Encoder
    from oreo.search.verifier import VERIFIER_FILE, LikelihoodVerifier, VerifierScorer, fit_on_buffer

    check_likelihood_scoring(cfg, sampler, task)
    folder = Path(cfg.run_dir) / "checkpoints" / "verifier"
    encoder = Encoder.unbounded(sampler.tokenizer)
    name = f"{policy_dir} @ {weights_stamp(policy_dir)}"
    verifier = LikelihoodVerifier.load(folder) if (folder / VERIFIER_FILE).exists() else None
    if verifier is None or verifier.policy != name or not cfg.resume:
        buffer = Path(cfg.run_dir) / "buffer"
        if not buffer.exists():
            raise FileNotFoundError(f"value=verifier is fitted on RUN_DIR's buffer, and {buffer} does not exist: give "
                                    f"run_dir of a run that collected samples")
        verifier = fit_on_buffer(sampler.model, encoder, Buffer(buffer).load(), policy_name=name,
                                 batch_size=cfg.search.value_batch_size)
        if rank_world()[0] == 0:
            verifier.save(folder)
        print(f"value=verifier: fitted on {verifier.n_fit} samples of {buffer}: {folder / VERIFIER_FILE}", flush=True)
    return VerifierScorer(sampler.model, encoder, verifier, batch_size=cfg.search.value_batch_size)


def agent_act(search, sampler, scorer):
    """An agent's per-turn choice for ``search``: greedy (also after an MCTS* plan), or ``best_of_n``: the
    highest-valued of ``n`` sampled actions (spec §6.3)."""
    from oreo.search.strategies import best_of_k_actions

    if search.strategy not in ("greedy", "best_of_n", "mcts"):
        raise ValueError(f"agent tasks take search=greedy, search=best_of_n (best-of-K actions per turn) or "
                         f"search=mcts (MCTS* over turns, then greedy), not {search.strategy}")
    k = 1 if search.strategy != "best_of_n" else search.n
    return lambda contexts, seed: best_of_k_actions(sampler, scorer, contexts, k=k,
                                                    temperature=search.temperature, seed=seed)


def agent_plan(search, task, sampler, scorer):
    """``search=mcts`` for agents: MCTS* over turns from each game's start (``oreo.search.strategies.plan_turns``),
    whose chosen path the episode plays before the policy continues greedily; None for the other strategies."""
    from oreo.search.strategies import plan_turns

    if search.strategy != "mcts":
        return None
    return lambda games, seed: plan_turns(search.mcts, task, sampler, scorer, games, seed=seed)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    search_run(run_config(cfg))


def _write_rows(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


if __name__ == "__main__":
    main()
