import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oreo.logprobs import (
    _chunked,
    forward_kl,
    gather_rows,
    reverse_kl,
    scatter_rows,
    token_logprobs,
    token_logprobs_and_reverse_kl,
)

H, V = 16, 97


def _head(h=H, v=V, seed=0, bias=False):
    torch.manual_seed(seed)
    return nn.Linear(h, v, bias=bias)


def _naive_logp(hidden, head):
    return F.log_softmax(head(hidden).float(), dim=-1)


def _grads(out, *tensors):
    return torch.autograd.grad(out, tensors)


# ---------------------------------------------------------------- token_logprobs


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 1024])
@pytest.mark.parametrize("bias", [False, True])
def test_token_logprobs_matches_naive(chunk_size, bias):
    head = _head(bias=bias)
    torch.manual_seed(1)
    hidden = torch.randn(3, 5, H, requires_grad=True)  # N = 15: not divisible by 7 or 16
    targets = torch.randint(V, (3, 5))
    w = torch.randn(3, 5)  # non-uniform upstream gradient

    out = token_logprobs(hidden, head, targets, chunk_size=chunk_size)
    ref = _naive_logp(hidden, head).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert out.shape == targets.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref)

    params = [hidden, *head.parameters()]
    for g, g_ref in zip(_grads((out * w).sum(), *params), _grads((ref * w).sum(), *params)):
        torch.testing.assert_close(g, g_ref)


def test_token_logprobs_weight_tied_head():
    torch.manual_seed(0)
    emb = nn.Embedding(V, H)
    head = nn.Linear(H, V, bias=False)
    head.weight = emb.weight
    ids = torch.randint(V, (2, 6))
    targets = torch.randint(V, (2, 6))

    out = token_logprobs(emb(ids), head, targets, chunk_size=5)
    ref = _naive_logp(emb(ids), head).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out, ref)
    (g,) = _grads(out.sum(), emb.weight)
    (g_ref,) = _grads(ref.sum(), emb.weight)
    torch.testing.assert_close(g, g_ref)


def test_token_logprobs_bf16_hidden():
    head32 = _head()
    head16 = _head().to(torch.bfloat16)
    torch.manual_seed(1)
    hidden16 = torch.randn(4, 9, H, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(V, (4, 9))

    out = token_logprobs(hidden16, head16, targets, chunk_size=10)
    assert out.dtype == torch.float32

    # Exact against the same bf16 logits upcast before log-softmax...
    upcast = _naive_logp(hidden16, head16).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out, upcast)
    # ...and close to the all-float32 computation.
    hidden32 = hidden16.detach().float().requires_grad_()
    ref = _naive_logp(hidden32, head32).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=0)

    (g,) = _grads(out.sum(), hidden16)
    (g_ref,) = _grads(ref.sum(), hidden32)
    assert g.dtype == torch.bfloat16
    assert (g.float() - g_ref).norm() / g_ref.norm() < 5e-2


def test_token_logprobs_no_grad_and_empty():
    head = _head()
    hidden = torch.randn(2, 3, H)
    targets = torch.randint(V, (2, 3))
    with torch.no_grad():
        out = token_logprobs(hidden, head, targets, chunk_size=4)
        ref = _naive_logp(hidden, head).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert not out.requires_grad
    torch.testing.assert_close(out, ref)

    empty = token_logprobs(torch.randn(0, H), head, torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,) and empty.dtype == torch.float32


# ---------------------------------------------------------------- KL


def _kl_setup(n=13):
    head, ref_head = _head(seed=0), _head(seed=1)
    torch.manual_seed(2)
    hidden = torch.randn(n, H, requires_grad=True)
    ref_hidden = torch.randn(n, H, requires_grad=True)
    return hidden, head, ref_hidden, ref_head


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 1024])
def test_reverse_kl_matches_naive(chunk_size):
    hidden, head, ref_hidden, ref_head = _kl_setup()
    w = torch.randn(hidden.shape[0])

    out = reverse_kl(hidden, head, ref_hidden, ref_head, chunk_size=chunk_size)
    logp = _naive_logp(hidden, head)
    logq = _naive_logp(ref_hidden, ref_head).detach()
    naive = (logp.exp() * (logp - logq)).sum(-1)
    as_in_reference = F.kl_div(input=logq, target=logp, log_target=True, reduction="none").sum(-1)
    assert out.shape == (hidden.shape[0],) and out.dtype == torch.float32
    assert (out >= -1e-6).all()
    torch.testing.assert_close(out, naive)
    torch.testing.assert_close(out, as_in_reference)

    params = [hidden, *head.parameters()]
    for g, g_ref in zip(_grads((out * w).sum(), *params), _grads((naive * w).sum(), *params)):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 1024])
def test_fused_logprobs_and_kl_match_the_separate_functions(chunk_size):
    hidden, head, ref_hidden, ref_head = _kl_setup()
    targets = torch.randint(0, V, (hidden.shape[0],))
    w1, w2 = torch.randn(hidden.shape[0]), torch.randn(hidden.shape[0])
    logp, kl = token_logprobs_and_reverse_kl(hidden, head, targets, ref_hidden, ref_head, chunk_size=chunk_size)
    logp_ref = token_logprobs(hidden, head, targets, chunk_size=chunk_size)
    kl_ref = reverse_kl(hidden, head, ref_hidden, ref_head, chunk_size=chunk_size)
    torch.testing.assert_close(logp, logp_ref)
    torch.testing.assert_close(kl, kl_ref)
    params = [hidden, *head.parameters()]
    got = _grads((logp * w1).sum() + (kl * w2).sum(), *params)
    expected = _grads((logp_ref * w1).sum() + (kl_ref * w2).sum(), *params)
    for g, g_ref in zip(got, expected):
        torch.testing.assert_close(g, g_ref)
    empty = token_logprobs_and_reverse_kl(hidden[:0], head, targets[:0], ref_hidden[:0], ref_head)
    assert empty[0].shape == empty[1].shape == (0,)


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 1024])
def test_forward_kl_matches_naive(chunk_size):
    hidden, head, ref_hidden, ref_head = _kl_setup()
    w = torch.randn(hidden.shape[0])

    out = forward_kl(hidden, head, ref_hidden, ref_head, chunk_size=chunk_size)
    logp = _naive_logp(hidden, head)
    logq = _naive_logp(ref_hidden, ref_head).detach()
    naive = (logq.exp() * (logq - logp)).sum(-1)
    assert (out >= -1e-6).all()
    torch.testing.assert_close(out, naive)

    params = [hidden, *head.parameters()]
    for g, g_ref in zip(_grads((out * w).sum(), *params), _grads((naive * w).sum(), *params)):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("kl", [reverse_kl, forward_kl])
def test_kl_reference_side_gets_no_gradient(kl):
    hidden, head, ref_hidden, ref_head = _kl_setup()
    kl(hidden, head, ref_hidden, ref_head, chunk_size=4).sum().backward()
    assert hidden.grad is not None and head.weight.grad is not None
    assert ref_hidden.grad is None
    assert all(p.grad is None for p in ref_head.parameters())


@pytest.mark.parametrize("kl", [reverse_kl, forward_kl])
def test_kl_is_zero_for_identical_models(kl):
    hidden, head, _, _ = _kl_setup()
    out = kl(hidden, head, hidden, head, chunk_size=5)
    torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- memory


class _SavedSizes:
    """Record numel of every tensor saved for backward while active."""

    def __init__(self):
        self.sizes = []

    def __enter__(self):
        def pack(t):
            self.sizes.append(t.numel())
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


BIG_V, BIG_N, SMALL_H, CHUNK = 50_000, 256, 32, 64


def _big_setup():
    torch.manual_seed(0)
    head = nn.Linear(SMALL_H, BIG_V, bias=False)
    ref_head = nn.Linear(SMALL_H, BIG_V, bias=False)
    hidden = torch.randn(BIG_N, SMALL_H, requires_grad=True)
    ref_hidden = torch.randn(BIG_N, SMALL_H)
    targets = torch.randint(BIG_V, (BIG_N,))
    return hidden, head, ref_hidden, ref_head, targets


def test_memory_saved_tensors_bounded_by_one_chunk():
    hidden, head, ref_hidden, ref_head, targets = _big_setup()
    bound = CHUNK * BIG_V

    # The naive version saves at least one full [N, V] tensor, so this check can fail.
    with _SavedSizes() as naive:
        _naive_logp(hidden, head).gather(-1, targets[:, None]).sum()
    assert max(naive.sizes) >= BIG_N * BIG_V

    with _SavedSizes() as rec:
        lp = token_logprobs(hidden, head, targets, chunk_size=CHUNK).sum()
    # Total, not just max: un-checkpointed chunks would each save [chunk, V].
    assert sum(rec.sizes) <= bound, max(rec.sizes)

    with _SavedSizes() as rec:
        kl = reverse_kl(hidden, head, ref_hidden, ref_head, chunk_size=CHUNK).sum()
    assert sum(rec.sizes) <= bound, max(rec.sizes)

    with _SavedSizes() as rec:
        fkl = forward_kl(hidden, head, ref_hidden, ref_head, chunk_size=CHUNK).sum()
    assert sum(rec.sizes) <= bound, max(rec.sizes)

    # Backward still works (recomputes one chunk at a time).
    (lp + kl + fkl).backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()


def test_memory_check_detects_missing_checkpoint():
    # Sanity check of the test itself: chunking alone (no checkpoint) keeps
    # every chunk's logits alive for backward, i.e. N·V in total.
    hidden, head, _, _, targets = _big_setup()

    def chunk_fn(h_c, t_c):
        return F.log_softmax(head(h_c).float(), -1).gather(-1, t_c[:, None]).squeeze(-1)

    with _SavedSizes() as rec:
        _chunked(chunk_fn, (hidden, targets), CHUNK, use_checkpoint=False)
    assert sum(rec.sizes) > CHUNK * BIG_V


# ---------------------------------------------------------------- gather / scatter


def test_gather_scatter_round_trip():
    torch.manual_seed(0)
    mask = torch.rand(3, 7) > 0.5
    x = torch.randn(3, 7)

    rows = gather_rows(x, mask)
    assert rows.shape == (int(mask.sum()),)
    torch.testing.assert_close(rows, x[mask])

    back = scatter_rows(rows, mask)
    torch.testing.assert_close(back, torch.where(mask, x, torch.zeros_like(x)))
    torch.testing.assert_close(gather_rows(back, mask.long()), rows)

    # Trailing dims and gradient flow.
    feats = torch.randn(3, 7, 4)
    vals = gather_rows(feats, mask.int()).requires_grad_()
    out = scatter_rows(vals, mask)
    assert out.shape == (3, 7, 4)
    assert (out[~mask] == 0).all()
    out.sum().backward()
    torch.testing.assert_close(vals.grad, torch.ones_like(vals))
