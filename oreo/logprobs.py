"""Memory-lean per-token log-probs and exact full-vocabulary KL.

The functions here take *final hidden states* and an output head (the LM head,
any module mapping ``[..., H] -> [..., V]``; typically an ``nn.Linear`` without
bias, possibly weight-tied to the input embedding) instead of logits. This way
the ``[batch, time, vocab]`` logits tensor, the largest activation in LM
training (spec §9.1: ``B·L·|V|·4`` bytes, about 5 GB for Qwen with B=4,
L=2048), never exists.

Memory bound
------------
The leading dims are flattened to ``N`` rows and processed ``chunk_size`` rows
at a time. Logits and log-softmax are computed in float32 whatever the hidden
dtype (the chunk's logits are upcast). So at any moment only one chunk's
``[chunk_size, V]`` float32 logits (plus a few same-sized temporaries) are alive:

* without autograd (``torch.no_grad`` or nothing requires grad) each chunk is
  computed and freed before the next one;
* with autograd each chunk runs under
  ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, so nothing
  of size ``[chunk, V]`` is saved for backward. Only the chunk's inputs are
  kept, and the logits are recomputed chunk by chunk during backward.

Peak extra memory is therefore ``O(chunk_size · V)`` instead of ``O(N · V)``.

Trade-off
---------
The backward pass recomputes every chunk's logits: roughly one extra head
matmul (``N·H·V`` FLOPs) per call, plus the softmax. For the KL functions the
recompute also re-runs the no-grad reference head, since caching the reference
log-probs would itself cost ``N·V`` memory. For a typical LM the head is a small
share of the total FLOPs, so this is cheap compared with the memory saved.
``chunk_size`` trades peak memory against kernel efficiency.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["token_logprobs", "token_logprobs_and_reverse_kl", "reverse_kl", "forward_kl", "gather_rows",
           "scatter_rows"]


def _needs_grad(hidden: Tensor, head: nn.Module) -> bool:
    if not torch.is_grad_enabled():
        return False
    return hidden.requires_grad or any(p.requires_grad for p in head.parameters())


def _chunked(
    fn: Callable[..., Tensor],
    tensors: tuple[Tensor, ...],
    chunk_size: int,
    use_checkpoint: bool,
    width: tuple[int, ...] = (),
) -> Tensor:
    """Apply ``fn`` to row-chunks of ``tensors`` (all with ``N`` leading rows).

    ``fn`` maps chunks ``[c, ...]`` to ``[c]`` (or ``[c, k]``); returns the concatenation ``[N]``
    (``[N, k]``; ``width`` gives k for an empty input).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = tensors[0].shape[0]
    if n == 0:
        return torch.zeros(0, *width, dtype=torch.float32, device=tensors[0].device)
    outs = []
    for start in range(0, n, chunk_size):
        chunk = tuple(t[start : start + chunk_size] for t in tensors)
        if use_checkpoint:
            outs.append(checkpoint(fn, *chunk, use_reentrant=False))
        else:
            outs.append(fn(*chunk))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _logits32(head: nn.Module, h: Tensor) -> Tensor:
    return head(h).float()


def token_logprobs(
    hidden: Tensor, head: nn.Module, targets: Tensor, *, chunk_size: int = 1024
) -> Tensor:
    """Log-probability of ``targets`` under ``softmax(head(hidden))``.

    Args:
        hidden: ``[..., H]`` final hidden states (any float dtype).
        head: module mapping ``[c, H] -> [c, V]``.
        targets: ``[...]`` token ids (same leading shape as ``hidden``).
        chunk_size: rows of the flattened leading dims per chunk.

    Returns:
        float32 ``[...]``: ``log_softmax(head(hidden))[..., target]``.
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} mismatch")
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1, 1).long()

    def chunk_fn(h_c: Tensor, t_c: Tensor) -> Tensor:
        logits = _logits32(head, h_c)
        # gather − logsumexp avoids materialising a second [c, V] log-softmax tensor.
        return (logits.gather(-1, t_c) - logits.logsumexp(-1, keepdim=True)).squeeze(-1)

    out = _chunked(chunk_fn, (h, t), chunk_size, _needs_grad(hidden, head))
    return out.reshape(targets.shape)


def token_logprobs_and_reverse_kl(
    hidden: Tensor, head: nn.Module, targets: Tensor, ref_hidden: Tensor, ref_head: nn.Module, *,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """:func:`token_logprobs` and :func:`reverse_kl` from one computation of the policy's logits per
    chunk (what the OREO step needs at every action position).

    Args:
        hidden: ``[N, H]`` policy hidden states.
        head: policy head, ``[c, H] -> [c, V]``.
        targets: ``[N]`` token ids.
        ref_hidden: ``[N, H_ref]`` reference hidden states at the same positions.
        ref_head: reference head.
        chunk_size: rows per chunk.

    Returns:
        float32 ``([N] log π(target), [N] KL(π ‖ π_ref))``; gradients through the policy side only.
    """
    _check_kl_inputs(hidden, ref_hidden)
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} mismatch")

    def chunk_fn(h_c: Tensor, t_c: Tensor, r_c: Tensor) -> Tensor:
        logp = F.log_softmax(_logits32(head, h_c), dim=-1)
        with torch.no_grad():
            logq = F.log_softmax(_logits32(ref_head, r_c), dim=-1)
        kl = (logp.exp() * (logp - logq)).sum(-1)
        return torch.stack([logp.gather(-1, t_c[:, None]).squeeze(-1), kl], dim=-1)

    out = _chunked(chunk_fn, (hidden, targets.long(), ref_hidden.detach()), chunk_size,
                   _needs_grad(hidden, head), width=(2,))
    return out[:, 0], out[:, 1]


def _check_kl_inputs(hidden: Tensor, ref_hidden: Tensor) -> None:
    if hidden.dim() != 2 or hidden.shape[0] != ref_hidden.shape[0]:
        raise ValueError(
            f"expected hidden [N, H] and ref_hidden [N, H'], got {tuple(hidden.shape)} "
            f"and {tuple(ref_hidden.shape)}"
        )


def reverse_kl(
    hidden: Tensor,
    head: nn.Module,
    ref_hidden: Tensor,
    ref_head: nn.Module,
    *,
    chunk_size: int = 1024,
) -> Tensor:
    """Exact per-position reverse KL, ``KL(π ‖ π_ref)``, over the full vocabulary.

    ``KL = Σ_v π(v) (log π(v) − log π_ref(v))`` with ``π = softmax(head(hidden))``
    and ``π_ref = softmax(ref_head(ref_hidden))``. This equals
    ``F.kl_div(input=log π_ref, target=log π, log_target=True).sum(-1)``
    (the reference implementation, spec §2.3).

    Args:
        hidden: ``[N, H]`` policy hidden states at the positions to evaluate.
        head: policy head, ``[c, H] -> [c, V]``.
        ref_hidden: ``[N, H_ref]`` reference hidden states (same positions).
        ref_head: reference head, ``[c, H_ref] -> [c, V]``.
        chunk_size: rows per chunk.

    Returns:
        float32 ``[N]``. Gradients flow through ``hidden`` and ``head`` only;
        the reference side is evaluated under ``no_grad``.
    """
    _check_kl_inputs(hidden, ref_hidden)

    def chunk_fn(h_c: Tensor, r_c: Tensor) -> Tensor:
        logp = F.log_softmax(_logits32(head, h_c), dim=-1)
        with torch.no_grad():
            logq = F.log_softmax(_logits32(ref_head, r_c), dim=-1)
        return (logp.exp() * (logp - logq)).sum(-1)

    return _chunked(chunk_fn, (hidden, ref_hidden.detach()), chunk_size, _needs_grad(hidden, head))


def forward_kl(
    hidden: Tensor,
    head: nn.Module,
    ref_hidden: Tensor,
    ref_head: nn.Module,
    *,
    chunk_size: int = 1024,
) -> Tensor:
    """Exact per-position forward KL, ``KL(π_ref ‖ π)``, over the full vocabulary.

    ``KL = Σ_v π_ref(v) (log π_ref(v) − log π(v))``. Same arguments and shapes as
    :func:`reverse_kl`; returns float32 ``[N]`` with gradient through the policy
    side (``hidden``, ``head``) only.
    """
    _check_kl_inputs(hidden, ref_hidden)

    def chunk_fn(h_c: Tensor, r_c: Tensor) -> Tensor:
        logp = F.log_softmax(_logits32(head, h_c), dim=-1)
        with torch.no_grad():
            logq = F.log_softmax(_logits32(ref_head, r_c), dim=-1)
            q = logq.exp()
        return (q * (logq - logp)).sum(-1)

    return _chunked(chunk_fn, (hidden, ref_hidden.detach()), chunk_size, _needs_grad(hidden, head))


def gather_rows(x: Tensor, mask: Tensor) -> Tensor:
    """Select the positions where ``mask`` is nonzero.

    Args:
        x: ``[B, T, ...]``.
        mask: ``[B, T]`` (bool or 0/1).

    Returns:
        ``[N, ...]`` with ``N = mask.sum()``, in row-major (b, t) order.
    """
    return x[mask.bool()]


def scatter_rows(values: Tensor, mask: Tensor) -> Tensor:
    """Inverse of :func:`gather_rows`: place ``values`` back at the masked positions.

    Args:
        values: ``[N, ...]`` with ``N = mask.sum()``.
        mask: ``[B, T]``.

    Returns:
        ``[B, T, ...]`` equal to ``values`` where ``mask`` is nonzero and 0
        elsewhere; differentiable w.r.t. ``values``.
    """
    m = mask.bool()
    out = values.new_zeros(*m.shape, *values.shape[1:])
    return out.index_put((m,), values)
