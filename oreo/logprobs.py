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
dtype (the chunk's logits are upcast). Peak extra memory is ``O(chunk_size · V)``
instead of ``O(N · V)``; more precisely, the number of ``[chunk_size, V]``
float32 buffers alive at any moment is:

* **one** (two for the KL functions: the policy's and the reference's logits)
  without autograd (``torch.no_grad`` or nothing requires grad): a plain loop
  computes each chunk's logits, reduces them in place and frees them before the
  next chunk;
* **one** (two for the KL functions) with autograd, in forward and in backward,
  when the head is an ``nn.Linear`` (every LM head here, LoRA policies
  included: adapters never wrap the head). A custom :class:`torch.autograd.Function`
  saves only the hidden rows, the targets and per-row statistics (``[N]``:
  logsumexp; for the KL also the reference rows, the reference's logsumexp and
  the KL), plus the head's ``weight`` and ``bias`` (the parameters themselves, no
  copy). Backward recomputes each chunk's logits and turns that buffer, in
  place, into the gradient of the logits (for log-probs ``g·(one-hot −
  softmax)``), then accumulates ``grad_hidden = G·W``, ``grad_W += Gᵀ·h`` and
  ``grad_b += Σ G``, each only if needed (frozen head, frozen hidden);
* for any other head (or under autocast), each chunk runs under
  ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: nothing of
  size ``[chunk, V]`` is saved for backward, but the chunk's backward holds four
  to five such buffers (autograd's log-softmax / logsumexp and gather backward).

With bf16 / float16 heads the chunk's logits briefly exist in that dtype as
well before the upcast (and the float32 gradient of the logits is cast back to
it for the matmuls): half a buffer more each.

Distributed heads (DeepSpeed ZeRO-3)
------------------------------------
The head is always *called*, never just read: ZeRO-3 gathers a partitioned
``weight`` in the module's pre-forward hook and frees it in its post-forward
hook. The fused path runs the whole autograd ``Function`` as the head's forward
for one call (:func:`_call_as_forward`), so it reads ``head.weight`` while it is
gathered, and the hooks ZeRO-3 attaches to the module's outputs and inputs
gather it again before the Function's backward and release it afterwards, as for
a plain ``nn.Linear`` call. The reference head of the KL functions is called
chunk by chunk in forward and backward (without grad), as before.

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

from typing import Any, Callable

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


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


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
    _check_chunk_size(chunk_size)
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


def _linear32(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """What ``_logits32`` computes for an ``nn.Linear`` head, from its parameters."""
    return F.linear(h, weight, bias).float()


def _logsumexp_(x: Tensor) -> Tensor:
    """``torch.logsumexp(x, -1)`` of a float32 ``[c, V]`` tensor, computed in place: ``x`` is overwritten.

    The same operations as torch's own (max, shift, exp, sum, log, add back), hence bitwise the same
    result, without its ``[c, V]`` temporary."""
    m = x.amax(-1, keepdim=True)
    m.masked_fill_(m.abs() == float("inf"), 0)
    return x.sub_(m).exp_().sum(-1).log_().add_(m.squeeze(-1))


def _logsumexp(x: Tensor) -> Tensor:
    """``torch.logsumexp(x, -1)`` of a ``[c, V]`` tensor, keeping ``x``: a few rows at a time, so its
    temporary is an eighth of ``x`` (rows are independent: bitwise the same result)."""
    step = max(1, -(-x.shape[0] // 8))
    if x.shape[0] <= step:
        return torch.logsumexp(x, -1)
    return torch.cat([torch.logsumexp(x[s : s + step], -1) for s in range(0, x.shape[0], step)])


def _log_softmax_(x: Tensor) -> Tensor:
    """``log_softmax(x, -1)`` of a float32 ``[c, V]`` tensor, in place, as ``(x − max) − log Σ exp(x − max)``
    (in float32 at least as accurate as ``F.log_softmax``); returns ``[2, c]``: the max and the log-sum, from
    which :func:`_relog_softmax_` recomputes exactly the same values. Temporary: an eighth of ``x``."""
    shift = x.amax(-1)
    logsum = _logsumexp(x.sub_(shift[:, None]))
    x.sub_(logsum[:, None])
    return torch.stack([shift, logsum])


def _relog_softmax_(x: Tensor, stats: Tensor) -> Tensor:
    """:func:`_log_softmax_` again, from its returned statistics (``[2, c]``)."""
    return x.sub_(stats[0, :, None]).sub_(stats[1, :, None])


def _fusable(head: nn.Module, hidden: Tensor) -> bool:
    """Whether ``head`` computes ``F.linear(x, head.weight, head.bias)`` (so the fused Functions may use its
    parameters directly): an ``nn.Linear`` whose forward is not overridden, outside autocast."""
    return (
        isinstance(head, nn.Linear)
        and type(head).forward is nn.Linear.forward
        and "forward" not in head.__dict__  # e.g. accelerate's offloading hooks replace it
        and not torch.is_autocast_enabled(hidden.device.type)
    )


def _call_as_forward(head: nn.Module, fn: Callable[..., Any], *args: Tensor) -> Any:
    """``head(*args)`` with ``fn`` in place of ``head.forward`` for this one call.

    ``fn`` runs in the module's forward context: the hooks registered on ``head`` fire around it exactly as
    around ``head.forward``. DeepSpeed ZeRO-3 relies on this: its pre-forward hook gathers the partitioned
    ``weight`` (so ``fn`` may read ``head.weight``) and the post-forward hook releases it; the autograd
    functions it wraps around the module's outputs and inputs gather it again before the outputs' backward
    and release it after the inputs'. ``fn`` must use the tensors it is passed (the hooks may replace them).
    """

    def forward(*a: Tensor) -> Any:
        del head.forward  # the class's forward is back before fn runs: fn may call head itself
        return fn(*a)

    head.forward = forward
    try:
        return head(*args)
    finally:
        head.__dict__.pop("forward", None)


def _rows(n: int, chunk_size: int):
    return (slice(s, s + chunk_size) for s in range(0, n, chunk_size))


def _reverse_kl_(logp: Tensor, logq: Tensor) -> Tensor:
    """Per row ``Σ π (log π − log π_ref)`` from ``[c, V]`` log π and log π_ref; overwrites both."""
    diff = logq.neg_().add_(logp)  # log π − log π_ref
    return logp.exp_().mul_(diff).sum(-1)


def _forward_kl_(logp: Tensor, logq: Tensor) -> Tensor:
    """Per row ``Σ π_ref (log π_ref − log π)`` from ``[c, V]`` log π and log π_ref; overwrites both."""
    diff = logp.neg_().add_(logq)  # log π_ref − log π
    return logq.exp_().mul_(diff).sum(-1)


Logits = Callable[[Tensor], Tensor]  # [c, H] hidden rows -> [c, V] float32 logits (a fresh tensor)


def _logprob_loop(logits: Logits, hidden: Tensor, targets: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """``(log π(target), logsumexp)`` ``[N]`` each, one chunk's logits alive at a time."""
    n = hidden.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
    for r in _rows(n, chunk_size):
        z = logits(hidden[r])
        out[r] = z.gather(-1, targets[r, None]).squeeze(-1)
        lse[r] = _logsumexp_(z)  # gather − logsumexp, as log_softmax(z)[target], bitwise
        del z
    return out.sub_(lse), lse


def _kl_loop(logits: Logits, hidden: Tensor, targets: Tensor | None, ref_hidden: Tensor, ref_head: nn.Module,
             kind: str, chunk_size: int) -> tuple[Tensor | None, Tensor, Tensor]:
    """``(log π(target) or None, KL, stats)``: ``[N]``, ``[N]`` and ``[4, N]`` (the log-softmax statistics of
    the policy's and the reference's logits, see :func:`_log_softmax_`); two chunks of logits (policy and
    reference) alive at a time. The reference head runs without grad."""
    n, dev = hidden.shape[0], hidden.device
    kl = torch.empty(n, dtype=torch.float32, device=dev)
    stats = torch.empty(4, n, dtype=torch.float32, device=dev)
    logp_t = None if targets is None else torch.empty(n, dtype=torch.float32, device=dev)
    for r in _rows(n, chunk_size):
        logp = logits(hidden[r])
        stats[:2, r] = _log_softmax_(logp)
        if logp_t is not None:
            logp_t[r] = logp.gather(-1, targets[r, None]).squeeze(-1)
        with torch.no_grad():
            logq = _logits32(ref_head, ref_hidden[r])
        stats[2:, r] = _log_softmax_(logq)
        kl[r] = _reverse_kl_(logp, logq) if kind == "reverse" else _forward_kl_(logp, logq)
        del logp, logq
    return logp_t, kl, stats


class _HeadGrads:
    """Accumulates the gradients of a linear head's input, weight and bias from per-chunk gradients of its
    (float32) logits; each only if autograd needs it (``needs``: hidden, weight, bias)."""

    def __init__(self, needs: tuple[bool, ...], hidden: Tensor, weight: Tensor, bias: Tensor | None):
        self.weight = weight
        self.hidden = torch.empty_like(hidden) if needs[0] else None
        self.w = torch.zeros_like(weight) if needs[1] else None
        self.b = torch.zeros_like(bias) if bias is not None and needs[2] else None

    def add(self, r: slice, grad_logits: Tensor, h: Tensor) -> None:
        g = grad_logits.to(self.weight.dtype)  # the float32 logits were upcast from the head's dtype
        if self.hidden is not None:
            self.hidden[r] = g @ self.weight
        if self.w is not None:
            self.w.addmm_(g.t(), h)
        if self.b is not None:
            self.b.add_(g.sum(0))

    def result(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return self.hidden, self.w, self.b


class _LinearTokenLogprob(torch.autograd.Function):
    """``log_softmax(h Wᵀ + b)[target]`` per row, chunk by chunk. Saves hidden, targets, weight, bias and the
    logsumexp ``[N]``: no ``[chunk, V]`` tensor; one is alive at a time in forward and in backward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                chunk_size: int) -> Tensor:
        out, lse = _logprob_loop(lambda h: _linear32(h, weight, bias), hidden, targets, chunk_size)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        grads = _HeadGrads(ctx.needs_input_grad, hidden, weight, bias)
        grad_out = grad_out.float()
        for r in _rows(hidden.shape[0], ctx.chunk_size):
            g = grad_out[r, None]
            grad = _linear32(hidden[r], weight, bias)  # the chunk's logits, recomputed, then in place:
            grad.sub_(lse[r, None]).exp_().mul_(-g)  # −g·softmax
            grad.scatter_add_(-1, targets[r, None], g)  # + g at the target: g·(one-hot − softmax)
            grads.add(r, grad, hidden[r])
            del grad
        return (*grads.result(), None, None)


class _LinearKL(torch.autograd.Function):
    """Exact per-row KL between ``π = softmax(h Wᵀ + b)`` and ``π_ref = softmax(ref_head(r))``: ``kind``
    ``"reverse"``, ``KL(π ‖ π_ref)`` (returned with ``log π(target)`` when ``targets`` is given), or
    ``"forward"``, ``KL(π_ref ‖ π)``. Gradients to the policy side only. Saves no ``[chunk, V]`` tensor; two
    (policy and reference logits) are alive at a time in forward and in backward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor | None,
                ref_hidden: Tensor, ref_head: nn.Module, kind: str, chunk_size: int):
        logp_t, kl, stats = _kl_loop(lambda h: _linear32(h, weight, bias), hidden, targets, ref_hidden, ref_head,
                                     kind, chunk_size)
        ctx.save_for_backward(hidden, weight, bias, targets, ref_hidden, stats, kl)
        ctx.ref_head, ctx.kind, ctx.chunk_size = ref_head, kind, chunk_size
        return kl if logp_t is None else (logp_t, kl)

    @staticmethod
    def backward(ctx, *grad_outs: Tensor):
        hidden, weight, bias, targets, ref_hidden, stats, kl = ctx.saved_tensors
        grad_lp, grad_kl = (None, *grad_outs) if targets is None else grad_outs
        grads = _HeadGrads(ctx.needs_input_grad, hidden, weight, bias)
        grad_kl = grad_kl.float()
        grad_lp = None if grad_lp is None else grad_lp.float()
        for r in _rows(hidden.shape[0], ctx.chunk_size):
            gk = grad_kl[r, None]
            logp = _relog_softmax_(_linear32(hidden[r], weight, bias), stats[:2, r])  # recomputed
            with torch.no_grad():
                logq = _relog_softmax_(_logits32(ctx.ref_head, ref_hidden[r]), stats[2:, r])
            if ctx.kind == "reverse":
                # d/dz of gk·KL + gl·log π(t):  π ⊙ (gk·(log π − log π_ref − KL) − gl) + gl·one-hot
                coef = logq.neg_().add_(logp).sub_(kl[r, None]).mul_(gk)
                if grad_lp is not None:
                    coef.sub_(grad_lp[r, None])
                grad = logp.exp_().mul_(coef)
                del coef  # logq's buffer: free it before the matmuls
                if grad_lp is not None:
                    grad.scatter_add_(-1, targets[r, None], grad_lp[r, None])
            else:
                # d/dz of gk·KL(π_ref ‖ π):  gk·(π − π_ref)
                grad = logp.exp_().sub_(logq.exp_()).mul_(gk)
            del logq, logp
            grads.add(r, grad, hidden[r])
            del grad
        return (*grads.result(), None, None, None, None, None)


# ------------------------------------------------------------------------------------------ public functions


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
    _check_chunk_size(chunk_size)
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1).long()

    if not _needs_grad(hidden, head):
        with torch.no_grad():
            out, _ = _logprob_loop(lambda x: _logits32(head, x), h, t, chunk_size)
    elif _fusable(head, h):
        out = _call_as_forward(
            head, lambda h_, t_: _LinearTokenLogprob.apply(h_, head.weight, head.bias, t_, chunk_size), h, t)
    else:
        def chunk_fn(h_c: Tensor, t_c: Tensor) -> Tensor:
            logits = _logits32(head, h_c)
            # gather − logsumexp avoids materialising a second [c, V] log-softmax tensor.
            return (logits.gather(-1, t_c[:, None]) - logits.logsumexp(-1, keepdim=True)).squeeze(-1)

        out = _chunked(chunk_fn, (h, t), chunk_size, use_checkpoint=True)
    return out.reshape(targets.shape)


def _check_kl_inputs(hidden: Tensor, ref_hidden: Tensor) -> None:
    if hidden.dim() != 2 or hidden.shape[0] != ref_hidden.shape[0]:
        raise ValueError(
            f"expected hidden [N, H] and ref_hidden [N, H'], got {tuple(hidden.shape)} "
            f"and {tuple(ref_hidden.shape)}"
        )


def _kl(hidden: Tensor, head: nn.Module, targets: Tensor | None, ref_hidden: Tensor, ref_head: nn.Module,
        kind: str, chunk_size: int) -> Any:
    """The KL functions' common body: ``KL`` ``[N]``, or ``(log π(target), KL)`` when ``targets`` is given."""
    _check_kl_inputs(hidden, ref_hidden)
    _check_chunk_size(chunk_size)
    ref_hidden = ref_hidden.detach()
    if targets is not None:
        if targets.shape != hidden.shape[:1]:
            raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} mismatch")
        targets = targets.long()

    if not _needs_grad(hidden, head):
        with torch.no_grad():
            logp_t, kl, _ = _kl_loop(lambda x: _logits32(head, x), hidden, targets, ref_hidden, ref_head, kind,
                                        chunk_size)
        return kl if logp_t is None else (logp_t, kl)

    if _fusable(head, hidden):
        def fused(h: Tensor, r: Tensor, *t: Tensor):
            return _LinearKL.apply(h, head.weight, head.bias, t[0] if t else None, r, ref_head, kind, chunk_size)

        return _call_as_forward(head, fused, hidden, ref_hidden, *(() if targets is None else (targets,)))

    def chunk_fn(h_c: Tensor, r_c: Tensor, *t_c: Tensor) -> Tensor:
        logp = F.log_softmax(_logits32(head, h_c), dim=-1)
        with torch.no_grad():
            logq = F.log_softmax(_logits32(ref_head, r_c), dim=-1)
        if kind == "forward":
            kl = (logq.exp() * (logq - logp)).sum(-1)
        else:
            kl = (logp.exp() * (logp - logq)).sum(-1)
        if not t_c:
            return kl
        return torch.stack([logp.gather(-1, t_c[0][:, None]).squeeze(-1), kl], dim=-1)

    tensors = (hidden, ref_hidden) + (() if targets is None else (targets,))
    out = _chunked(chunk_fn, tensors, chunk_size, use_checkpoint=True, width=() if targets is None else (2,))
    return out if targets is None else (out[:, 0], out[:, 1])


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
    return _kl(hidden, head, targets, ref_hidden, ref_head, "reverse", chunk_size)


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
    return _kl(hidden, head, None, ref_hidden, ref_head, "reverse", chunk_size)


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
    return _kl(hidden, head, None, ref_hidden, ref_head, "forward", chunk_size)


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
