"""``python -m oreo.iterate iterate.rounds=3``: multi-round OREO (paper §4.3, spec §7).

Round k collects with the latest policy (the SFT policy in round 1), adds that round to the buffer,
trains OREO from the latest policy and value, and evaluates. ``iterate.reference`` chooses the
reference policy of a round: ``sft`` (the KL anchor stays at the SFT model) or ``previous`` (the
previous round's policy, a trust region that moves). ``iterate.data`` trains on the ``latest`` round
only or on ``all`` rounds so far. A per-round table is printed and plotted to ``plots/iterate.png``.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from oreo.distributed import rank_world
from oreo.run_config import CONF_DIR, RunConfig, run_config, to_yaml
from oreo.stages import StageId


def plot_rounds(rows: list[dict], splits: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len({r["round"] for r in rows}) < len(rows):   # several methods a round (CPL): one bar per method and split
        fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.8))
        width = 0.8 / len(splits)
        for j, split in enumerate(splits):
            ax.bar([i + j * width for i in range(len(rows))], [100 * r[split] for r in rows], width, label=split)
        ax.set_xticks([i + width * (len(splits) - 1) / 2 for i in range(len(rows))])
        ax.set_xticklabels([r["method"] for r in rows], rotation=30, ha="right", fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for split in splits:
            ax.plot([r["round"] for r in rows], [100 * r[split] for r in rows], marker="o", label=split)
        ax.set_xlabel("round (0 = SFT)")
        ax.set_xticks([r["round"] for r in rows])
    ax.set_ylabel("greedy accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_iterations(cfg: RunConfig) -> list[dict]:
    from oreo.pipeline import Run

    it = cfg.iterate
    run = Run(cfg)
    splits = list(cfg.evaluate.splits)
    sft_dir = run.sft()
    rows = [{"round": 0, "method": "sft", **run.evaluate("sft", sft_dir)}]
    policy_dir, value_dir = sft_dir, None
    for k in range(1, it.rounds + 1):
        stats = run.collect(policy_dir, round=k - 1)
        new_policy = run.oreo(policy_dir, ref_dir=sft_dir if it.reference == "sft" else policy_dir,
                              value_dir=value_dir, rounds=[k - 1] if it.data == "latest" else list(range(k)),
                              round=k)
        value_dir = new_policy.parent / "value"
        policy_dir = new_policy
        name = StageId("oreo", k).name
        rows.append({"round": k, "method": name, "collect_accuracy": stats["frac_correct"],
                     **run.evaluate(name, policy_dir)})
        if run.main:
            print(f"round {k}: " + ", ".join(f"{s} {100 * rows[-1][s]:.1f}%" for s in splits), flush=True)
    return report_rounds(run, rows, splits, "iterate")


def report_rounds(run, rows: list[dict], splits: list[str], name: str) -> list[dict]:
    """Record the per-round ``rows`` in run.json, print the table, plot it to ``plots/NAME.png``
    and close the run."""
    run.record_rounds(rows)
    if run.main:
        plot = plot_rounds(rows, splits, run.files.plot(name))
        print(format_rounds(rows, splits))
        print(f"plot: {plot}\nresults: {run.files.metrics_json} (per round: {run.files.run_json})")
    run.close()
    return rows


def format_rounds(rows: list[dict], splits: list[str]) -> str:
    lines = [f"{'round':<6}{'method':<22}{'collected':>10}" + "".join(f"{s:>10}" for s in splits)]
    for r in rows:
        collected = f"{100 * r['collect_accuracy']:.1f}%" if "collect_accuracy" in r else "-"
        lines.append(f"{r['round']:<6}{r.get('method', ''):<22}{collected:>10}"
                     + "".join(f"{100 * r[s]:>9.1f}%" for s in splits))
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    cfg = run_config(cfg)
    if rank_world()[0] == 0:
        print(to_yaml(cfg))
    run_iterations(cfg)


if __name__ == "__main__":
    main()
