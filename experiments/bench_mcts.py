"""MCTS* against step-level beam search, with and without a shared context's KV cache, side by side.

``python experiments/bench_mcts.py RUN_DIR [--problems 64] [--repeats 2]`` on a finished run (its SFT policy and
OREO value): the same block of test problems searched, in one process, interleaved, by

- ``mcts``: ``search=mcts`` (the ``mcts`` defaults but ``--iterations``, b = 3; the whole budget, no end gate);
- ``beam``: ``search=beam`` with width 3 (3 beams × 3 samples per step, the same number of samples per state),

each with ``sampler.share_prefix`` on and off. Prints, per setting, the median over ``--repeats`` of wall time,
tree nodes (beam: candidates) per second, generated tokens per second and context tokens encoded, and the
ratios shared / not shared. Writes ``experiments/results/bench_mcts.md``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from oreo.encode import Encoder
from oreo.models import ValueModel, load_policy
from oreo.rollout.sampler import HFSampler
from oreo.run_config import read_run_config
from oreo.search.mcts import MCTSConfig
from oreo.search.strategies import SearchConfig, Searcher
from oreo.search.value import ValueScorer
from oreo.tasks import make_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="experiments/results/bench_mcts.md")
    args = parser.parse_args()
    run = Path(args.run_dir)
    cfg = read_run_config(run)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task)
    policy, tok = load_policy(str(run / "checkpoints" / "sft"), dtype=cfg.model.dtype)
    value = ValueModel.from_pretrained(run / "checkpoints" / "oreo" / "value", dtype=cfg.model.dtype)
    scorer = ValueScorer(value, Encoder.unbounded(tok), batch_size=512)
    problems = task.problems("test")[:args.problems]
    searches = {"mcts": SearchConfig(strategy="mcts", mcts=MCTSConfig(iterations=args.iterations, branch=3)),
                "beam": SearchConfig(strategy="beam", width=3)}
    results: dict[tuple[str, bool], list[dict]] = {}
    for r in range(args.repeats):
        for name, search in searches.items():
            for share in (True, False):
                sampler = HFSampler(policy, tok, Encoder.unbounded(tok), batch_size=512,
                                    max_new_tokens=cfg.evaluate.max_new_tokens, share_prefix=share)
                start = time.perf_counter()
                choices = Searcher(search, task, sampler, scorer).solve(problems, seed=r)
                wall = time.perf_counter() - start
                tokens = sum(c.tokens for c in choices)
                samples = sum(c.samples for c in choices)
                results.setdefault((name, share), []).append(
                    {"wall_s": wall, "nodes_per_s": samples / wall, "tokens_per_s": tokens / wall,
                     "prefill": sampler.prefill_tokens, "tokens": tokens})
                print(f"repeat {r} {name:<4} share_prefix={share!s:<5} {wall:6.1f} s  {samples / wall:7.1f} "
                      f"samples/s  {tokens / wall:7.1f} tokens/s", flush=True)

    def med(name, share, key):
        return statistics.median(x[key] for x in results[(name, share)])

    lines = [f"# MCTS* and beam search, with and without a shared context's KV cache ({args.problems} test problems)",
             "", f"command: `python experiments/bench_mcts.py {run} --problems {args.problems} "
             f"--iterations {args.iterations} --repeats {args.repeats}` (medians of interleaved repeats)",
             "", "| search | share_prefix | wall (s) | samples/s | generated tokens/s | context tokens encoded |",
             "|---|---|---|---|---|---|"]
    for name in searches:
        for share in (True, False):
            lines.append(f"| {name} | {share} | {med(name, share, 'wall_s'):.1f} | "
                         f"{med(name, share, 'nodes_per_s'):.1f} | {med(name, share, 'tokens_per_s'):.1f} | "
                         f"{med(name, share, 'prefill'):.0f} |")
    lines.append("")
    def ratio(a, b, key):
        return med(*a, key) / med(*b, key)

    for name in searches:
        shared, plain = (name, True), (name, False)
        lines.append(f"{name}: shared / not shared: tokens/s {ratio(shared, plain, 'tokens_per_s'):.2f}x, "
                     f"context tokens encoded {ratio(shared, plain, 'prefill'):.2f}x")
    lines.append(f"mcts / beam (shared): samples/s {ratio(('mcts', True), ('beam', True), 'nodes_per_s'):.2f}x, "
                 f"tokens/s {ratio(('mcts', True), ('beam', True), 'tokens_per_s'):.2f}x")
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
