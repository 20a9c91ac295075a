"""Process-group setup shared by the engines: gloo on CPU, nccl on CUDA, through DeepSpeed's comm layer.

Multi-process runs are started with ``torchrun --nproc_per_node N`` (it sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). A single process without those variables gets a world of one.
"""
from __future__ import annotations

import contextlib
import os
import socket

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when started by a distributed launcher (torchrun sets WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank_world() -> tuple[int, int]:
    """(rank, world size): from the process group once it exists, else from the launcher's environment
    (so a rank knows its share of the data before the group is created), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if launched():
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Create the default process group through ``deepspeed.init_distributed`` (idempotent).

    Under torchrun it joins the launched group; in a plain process it makes a world of one on localhost
    (DeepSpeed needs a group even then). On CUDA each process uses device ``cuda:LOCAL_RANK``.
    Returns ``(rank, world size)``.
    """
    import deepspeed

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    if not launched():
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                           ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    # Joins an existing torch.distributed group if the caller made one; never tries MPI discovery.
    deepspeed.init_distributed(dist_backend=backend(), auto_mpi_discovery=False, verbose=False)
    return rank_world()


def all_reduce_scalars(values: dict[str, float], op: str = "mean") -> dict[str, float]:
    """Mean (or sum) of scalar metrics over ranks; the identity in one process.

    A collective: every rank must call it with the same keys (in any order).
    """
    if op not in ("mean", "sum"):
        raise ValueError(f"op must be 'mean' or 'sum', got {op!r}")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if op == "mean":
        t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def barrier() -> None:
    """Wait for every rank; nothing to do in one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_from_rank0(obj):
    """Rank 0's ``obj`` (picklable) on every rank; ``obj`` in one process. A collective."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def full_parameters(*modules):
    """Inside the block every rank holds the modules' full parameters (for reading them, e.g. to save).

    Under ZeRO-3 parameters are partitioned across ranks and this gathers them: a collective, so every
    rank must enter it, and changes made inside are discarded. Otherwise (torch engine, ZeRO 0-2) it does
    nothing.
    """
    params = [p for m in modules for p in m.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield
