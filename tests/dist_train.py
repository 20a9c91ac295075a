"""Train a tiny model with the OREO trainer (and SFT) for a few steps; save final parameters and logged rows.

Run by tests/test_distributed.py, either in one process with the torch engine::

    python tests/dist_train.py OUT --engine torch

or in two processes with DeepSpeed ZeRO (gloo on CPU)::

    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 tests/dist_train.py OUT --engine deepspeed --zero-stage 2

Both use micro_batch_size=2 and batch_size=4, so they compute the same global gradient every step.
The trainers save their checkpoints to ``OUT/oreo`` (policy/, value/) and ``OUT/sft``; rank 0 also
writes ``OUT/params.pt`` (float64 copies of the in-memory state dicts, read on every rank) and every
rank writes ``OUT/logs_rank{r}.json`` (the rows the trainers logged on that rank).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oreo.config import EngineConfig  # noqa: E402
from oreo.distributed import full_parameters  # noqa: E402
from oreo.models import load_policy  # noqa: E402
from oreo.trainers.common import TrainConfig, accumulation_steps, unwrap, world  # noqa: E402
from oreo.trainers.dpo import DPOConfig, DPOObjective  # noqa: E402
from oreo.trainers.kto import KTOConfig, KTOObjective  # noqa: E402
from oreo.trainers.oreo import OREOConfig, OREOObjective  # noqa: E402
from oreo.trainers.sft import SFTConfig, SFTObjective  # noqa: E402

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def records(n: int = 12) -> list[dict]:
    out = []
    for i in range(n):
        a, b = i % 7 + 1, 3 * i % 11
        steps = [f"{a}+{b}={a + b}\n", f"#### {a + b}"] if i % 3 else [f"#### {a + b + i % 2}"]
        out.append({"id": f"r{i}", "task": "t", "problem_id": f"p{i // 2}", "prompt": f"{a} +{b}\n",
                    "steps": steps, "reward": [1.0, 0.0, 0.5, -0.25][i % 4]})
    return out


class ListLogger:
    def __init__(self):
        self.rows = []

    def log(self, stage, step, values):
        self.rows.append({"stage": stage, "step": step, **values})


class Crash(Exception):
    pass


def resumed_oreo(out: Path, tcfg, engine) -> dict:
    """OREO interrupted after step 2's checkpoint (save_every=1; every rank crashes as step 3 starts), then
    a fresh trainer resumes it from the in-stage checkpoint: the engines' states must carry everything."""
    cfg = tcfg()
    cfg.save_every = 1
    policy, tok = load_policy("tiny", tiny=TINY, seed=0)
    trainer = OREOObjective(policy, tok, OREOConfig(kl_type="k3", beta=0.1, max_len=64), cfg)
    losses, calls, first_of_step_3 = trainer.losses, [0], 2 * accumulation_steps(cfg)

    def crashing(batch):
        if calls[0] == first_of_step_3:
            raise Crash
        calls[0] += 1
        return losses(batch)

    trainer.losses = crashing
    try:
        trainer.fit(records(), engine=engine, out_dir=out / "oreo_resumed")
        raise AssertionError("the run was meant to crash")
    except Crash:
        pass
    policy, tok = load_policy("tiny", tiny=TINY, seed=0)
    trainer = OREOObjective(policy, tok, OREOConfig(kl_type="k3", beta=0.1, max_len=64), cfg)
    info = trainer.fit(records(), engine=engine, out_dir=out / "oreo_resumed")
    return {"resumed_from": info["resumed_from"], "oreo_policy_resumed": state(trainer.engines["policy"].module),
            "oreo_value_resumed": state(trainer.engines["value"].module)}


def reloaded_values(out: Path, tcfg, engine_cfg) -> dict:
    """The saved value model (backbone + head) loaded back into a fresh engine of the same kind; its
    values on a batch, next to the values of the model that was saved."""
    from oreo.batch import collate
    from oreo.encode import Encoder
    from oreo.models import ValueModel
    from oreo.trainers.common import build_engine

    _, tok = load_policy("tiny", tiny=TINY, seed=0)
    data = Encoder(tok, max_len=64).encode_all(records())
    batch = collate(data, tok.pad_token_id, "right")
    value = ValueModel.from_pretrained(out / "oreo" / "value")
    engine = build_engine(value, tcfg(), 1e-3, total_steps=1, engine=engine_cfg)
    with torch.no_grad():
        return {"values": engine.module(batch.input_ids, batch.attention_mask).double()}


def state(module) -> dict:
    with full_parameters(module):  # gathers ZeRO-3 partitions (a collective: every rank calls state)
        return {k: v.detach().to("cpu", torch.float64).clone() for k, v in unwrap(module).state_dict().items()}


def partition_every_parameter() -> None:
    """ZeRO-3 keeps parameters under 1e5 elements whole on every rank (all of a tiny model's): lower that
    threshold to 0 so the test exercises partitioned parameters (gathered for forward, for saving)."""
    import deepspeed

    initialize = deepspeed.initialize

    def patched(*args, config=None, **kwargs):
        config = {**config, "zero_optimization": {**config["zero_optimization"],
                                                  "stage3_param_persistence_threshold": 0}}
        return initialize(*args, config=config, **kwargs)

    deepspeed.initialize = patched


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--engine", default="torch")
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--no-sft", action="store_true")
    p.add_argument("--checks", action="store_true", help="also: reload the saved value model; crash and resume")
    args = p.parse_args()
    if args.engine == "deepspeed" and args.zero_stage == 3:
        partition_every_parameter()
    torch.set_num_threads(1)
    out = Path(args.out)
    t0 = time.perf_counter()

    def tcfg():
        return TrainConfig(epochs=1.0, batch_size=4, micro_batch_size=2, lr=3e-3, value_lr=3e-3, warmup_ratio=0.0,
                           log_every=1, seed=0)

    engine = EngineConfig(backend=args.engine, zero_stage=args.zero_stage)

    torch.manual_seed(0)
    policy, tok = load_policy("tiny", tiny=TINY, seed=0)
    initial = state(policy)
    trainer = OREOObjective(policy, tok, OREOConfig(kl_type="k3", beta=0.1, max_len=64), tcfg())
    logger = ListLogger()
    trainer.fit(records(), engine=engine, logger=logger, out_dir=out / "oreo")
    if args.engine == "deepspeed" and args.zero_stage == 3:  # really partitioned: no rank holds a whole weight
        assert all(p.numel() == 0 for m in (policy, trainer.value) for p in m.parameters()), "ZeRO-3 did not partition"
    params = {"initial_policy": initial,
              "oreo_policy": state(trainer.engines["policy"].module),
              "oreo_value": state(trainer.engines["value"].module)}
    rows = logger.rows
    if args.checks:
        from oreo.batch import collate
        from oreo.encode import Encoder

        batch = collate(Encoder(tok, max_len=64).encode_all(records()), tok.pad_token_id, "right")
        with torch.no_grad():
            trained = trainer.engines["value"].module(batch.input_ids, batch.attention_mask).double()
        params["value_round_trip"] = {"trained": trained, **reloaded_values(out, tcfg, engine)}
        params.update(resumed_oreo(out, tcfg, engine))

    if not args.no_sft:
        model, tok = load_policy("tiny", tiny=TINY, seed=1)
        logger = ListLogger()
        SFTObjective(model, tok, SFTConfig(max_len=64), tcfg()).fit(records(), engine=engine, logger=logger,
                                                                    out_dir=out / "sft")
        params["sft_policy"] = state(model)
        rows += logger.rows

    # the preference objectives: DPO (12 pairs from 24 records) and KTO, each 3 steps from its own start
    for name, n, build in (("dpo", 24, lambda m, t: DPOObjective(m, t, DPOConfig(beta=0.1, max_len=64), tcfg(),
                                                                  reference=copy.deepcopy(m))),
                           ("kto", 12, lambda m, t: KTOObjective(m, t, KTOConfig(beta=0.1, max_len=64), tcfg(),
                                                                  reference=copy.deepcopy(m)))):
        model, tok = load_policy("tiny", tiny=TINY, seed=2)
        build(model, tok).fit(records(n), engine=engine, out_dir=out / name)
        params[f"{name}_policy"] = state(model)

    rank, size = world()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"logs_rank{rank}.json").write_text(json.dumps(rows))
    if rank == 0:
        torch.save(params, out / "params.pt")
        print(f"[dist_train] engine={args.engine} world={size} trained in {time.perf_counter() - t0:.1f}s")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
