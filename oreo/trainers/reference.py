"""The frozen reference's per-token log-probs of the training data: computed once per buffer and cached.

They are constant on offline data, so OREO, DPO and KTO read them from here instead of running the
reference every micro-batch. The cache key hashes the token ids and ``ref_name``, which must name the
reference *weights* and dtype (the pipeline passes the checkpoint path, its ``weights_stamp`` and the
dtype): a reference retrained at the same path gets new log-probs, never the old ones.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from oreo.atomic_write import atomic_file
from oreo.batch import collate
from oreo.checkpoint import weights_stamp
from oreo.encode import Encoded
from oreo.logprobs import token_logprobs
from oreo.models import hidden_states
from oreo.progress import progress
from oreo.trainers.common import world


def reference_name(checkpoint: str | Path, dtype: str) -> str:
    """What the cache key says of a reference loaded from ``checkpoint``: the path, the stamp of its
    weight files (a retrained checkpoint at the same path gets another) and the dtype."""
    return f"{checkpoint}|{weights_stamp(checkpoint)}|{dtype}"


def cache_path(data: list[Encoded], cache_dir: str | Path, ref_name: str) -> Path:
    key = hashlib.sha256(ref_name.encode())
    for e in data:
        key.update(bytes(str(e.input_ids), "utf8"))
    return Path(cache_dir) / f"ref_logprobs-{key.hexdigest()[:16]}.safetensors"


def _read_cache(path: Path, n: int) -> list[torch.Tensor] | None:
    """The cached log-probs, or ``None`` (with a warning) when the file cannot be read."""
    try:
        stored = load_file(str(path))
        return [stored[str(i)] for i in range(n)]
    except Exception as e:  # a damaged or foreign file: recompute rather than fail or trust it
        warnings.warn(f"reference log-prob cache {path} cannot be read ({type(e).__name__}: {e}); recomputing it",
                      stacklevel=3)
        return None


@torch.no_grad()
def reference_logprobs(ref_model, data: list[Encoded], pad_token_id: int, *, batch_size: int = 32,
                       chunk_size: int = 1024, cache_dir: str | Path | None = None,
                       ref_name: str = "") -> list[torch.Tensor]:
    """ℓ^ref_t = log π_ref(x_{t+1} | x_≤t) for every encoded trajectory: ``[len(input_ids) - 1]`` float32 each,
    in the order of ``data``; read from / written to ``cache_dir`` when given (then ``ref_name`` must name
    the reference's weights and dtype, see the module docstring)."""
    if cache_dir is not None and not ref_name:
        raise ValueError("reference_logprobs: a cache_dir needs a ref_name naming the reference model")
    path = cache_path(data, cache_dir, ref_name) if cache_dir is not None else None
    if path is not None and path.exists() and (cached := _read_cache(path, len(data))) is not None:
        return cached
    was_training = ref_model.training
    ref_model.eval()
    device = next(ref_model.parameters()).device
    out = []
    for start in progress(iterable=range(0, len(data), batch_size), desc="reference log-probs", leave=False,
                          disable=world()[0] != 0):
        chunk = data[start:start + batch_size]
        batch = collate(chunk, pad_token_id, "right").to(device)
        hidden = hidden_states(ref_model, batch.input_ids, batch.attention_mask)
        logp = token_logprobs(hidden[:, :-1], ref_model.get_output_embeddings(), batch.input_ids[:, 1:],
                              chunk_size=chunk_size)
        out += [logp[i, :len(e.input_ids) - 1].float().cpu() for i, e in enumerate(chunk)]
    ref_model.train(was_training)
    if path is not None and world()[0] == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            save_file({str(i): t.contiguous() for i, t in enumerate(out)}, str(tmp))
    return out
