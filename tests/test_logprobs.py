import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_token_logprobs_bf16_hidden(dtype):
    head32 = _head()
    head16 = _head().to(dtype)
    torch.manual_seed(1)
    hidden16 = torch.randn(4, 9, H, dtype=dtype, requires_grad=True)
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

    g, g_w = _grads(out.sum(), hidden16, head16.weight)
    (g_ref,) = _grads(ref.sum(), hidden32)
    assert g.dtype == dtype
    assert (g.float() - g_ref).norm() / g_ref.norm() < 5e-2
    # the head's gradient too, against autograd through the same upcast logits
    (g_w_ref,) = _grads(upcast.sum(), head16.weight)
    assert g_w.dtype == dtype
    assert (g_w.float() - g_w_ref.float()).norm() / g_w_ref.float().norm() < 2e-2


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


@pytest.mark.parametrize("frozen", ["head", "hidden", "bias"])
def test_token_logprobs_frozen_head_or_hidden(frozen):
    """LoRA policy: the head is frozen, only the hidden states get a gradient; and the reverse."""
    head = _head(bias=True)
    torch.manual_seed(1)
    hidden = torch.randn(15, H, requires_grad=frozen != "hidden")
    targets = torch.randint(V, (15,))
    if frozen == "head":
        head.requires_grad_(False)
    elif frozen == "bias":
        head.bias.requires_grad_(False)
    trainable = [t for t in (hidden, head.weight, head.bias) if t.requires_grad]

    out = token_logprobs(hidden, head, targets, chunk_size=4)
    ref = _naive_logp(hidden, head).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    got = [t.grad for t in trainable]
    for t in trainable:
        t.grad = None
    ref.sum().backward()
    for g, t in zip(got, trainable):
        torch.testing.assert_close(g, t.grad)
    assert all(t.grad is None for t in (hidden, head.weight, head.bias) if not t.requires_grad)


def test_any_head_module_takes_the_general_path():
    """A head that is not a plain nn.Linear (a wrapper, a custom forward) is only ever called: same values and
    gradients as the naive computation."""
    head = nn.Sequential(_head(bias=True), nn.Tanh(), nn.Linear(V, V))
    ref_head = _head(seed=1)
    torch.manual_seed(1)
    hidden = torch.randn(13, H, requires_grad=True)
    ref_hidden = torch.randn(13, H)
    targets = torch.randint(V, (13,))
    logq = _naive_logp(ref_hidden, ref_head).detach()
    params = [hidden, *head.parameters()]

    def naive():
        logp = _naive_logp(hidden, head)
        return (logp.gather(-1, targets[:, None]).squeeze(-1), (logp.exp() * (logp - logq)).sum(-1),
                (logq.exp() * (logq - logp)).sum(-1))

    naive_lp, naive_kl, naive_fkl = naive()
    out = token_logprobs(hidden, head, targets, chunk_size=4)
    torch.testing.assert_close(out, naive_lp)
    for g, g_ref in zip(_grads(out.sum(), *params), _grads(naive()[0].sum(), *params)):
        torch.testing.assert_close(g, g_ref)

    lp, kl = token_logprobs_and_reverse_kl(hidden, head, targets, ref_hidden, ref_head, chunk_size=4)
    torch.testing.assert_close(lp, naive_lp)
    torch.testing.assert_close(kl, naive_kl)
    for g, g_ref in zip(_grads((lp + kl).sum(), *params), _grads((naive_lp + naive_kl).sum(), *params)):
        torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(forward_kl(hidden, head, ref_hidden, ref_head, chunk_size=4), naive_fkl)


class _PartitionedLikeZeRO3:
    """What DeepSpeed ZeRO-3 does to a module, in one process: its parameters are empty except while the
    module runs (pre-forward hook: gather; post-forward hook: release) and while autograd goes back through
    it (functions wrapped around its outputs gather before their backward, functions wrapped around its inputs
    release after theirs)."""

    def __init__(self, module):
        self.module = module
        self.full = {name: p.data for name, p in module.named_parameters()}
        self.gathers = 0
        outer = self

        class Gather(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.detach()

            @staticmethod
            def backward(ctx, g):
                outer.gather()
                return g

        class Release(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.detach()

            @staticmethod
            def backward(ctx, g):
                outer.release()
                return g

        def pre(mod, args):
            self.gather()
            return tuple(Release.apply(a) if a.requires_grad else a for a in args)

        def post(mod, args, out):
            self.release()
            outs = out if isinstance(out, tuple) else (out,)
            wrapped = tuple(Gather.apply(o) if o.requires_grad else o for o in outs)
            return wrapped if isinstance(out, tuple) else wrapped[0]

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)
        self.release()

    def gather(self):
        self.gathers += 1
        for name, p in self.module.named_parameters():
            p.data = self.full[name]

    def release(self):
        for p in self.module.parameters():
            p.data = torch.empty(0)


@pytest.mark.parametrize("fn", ["token_logprobs", "token_logprobs_and_reverse_kl", "forward_kl"])
def test_head_parameters_are_read_only_while_the_module_runs(fn):
    """The weight is read inside the head's own call and its backward (how ZeRO-3 gathers it), never outside."""
    head, ref_head = _head(bias=True), _head(seed=1)
    torch.manual_seed(1)
    hidden = torch.randn(13, H, requires_grad=True)
    ref_hidden = torch.randn(13, H)
    targets = torch.randint(V, (13,))
    w = torch.randn(13)

    def run(h):
        if fn == "token_logprobs":
            return token_logprobs(hidden, h, targets, chunk_size=4)
        if fn == "forward_kl":
            return forward_kl(hidden, h, ref_hidden, ref_head, chunk_size=4)
        lp, kl = token_logprobs_and_reverse_kl(hidden, h, targets, ref_hidden, ref_head, chunk_size=4)
        return lp + 0.5 * kl

    expected = run(head)
    exp_grads = _grads((expected * w).sum(), hidden, head.weight, head.bias)
    zero3 = _PartitionedLikeZeRO3(head)
    out = run(head)
    assert head.weight.numel() == 0  # released after the call
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    (out * w).sum().backward()
    # once for the forward, once per output for the backward: one call of the head, whatever the chunks
    assert zero3.gathers == 1 + (2 if fn == "token_logprobs_and_reverse_kl" else 1)
    zero3.gather()
    for g, g_ref in zip((hidden.grad, head.weight.grad, head.bias.grad), exp_grads):
        torch.testing.assert_close(g, g_ref)
    with torch.no_grad():  # the plain loop calls the module per chunk
        torch.testing.assert_close(run(head), expected, rtol=0, atol=0)



# ---------------------------------------------------------------- KL


def _kl_setup(n=13, bias=False):
    head, ref_head = _head(seed=0, bias=bias), _head(seed=1, bias=bias)
    torch.manual_seed(2)
    hidden = torch.randn(n, H, requires_grad=True)
    ref_hidden = torch.randn(n, H, requires_grad=True)
    return hidden, head, ref_hidden, ref_head


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 1024])
@pytest.mark.parametrize("bias", [False, True])
def test_reverse_kl_matches_naive(chunk_size, bias):
    hidden, head, ref_hidden, ref_head = _kl_setup(bias=bias)
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
@pytest.mark.parametrize("bias", [False, True])
def test_fused_logprobs_and_kl_match_the_separate_functions(chunk_size, bias):
    hidden, head, ref_hidden, ref_head = _kl_setup(bias=bias)
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
@pytest.mark.parametrize("bias", [False, True])
def test_forward_kl_matches_naive(chunk_size, bias):
    hidden, head, ref_hidden, ref_head = _kl_setup(bias=bias)
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
    """Record numel of every tensor saved for backward while active (``params``: the parameters saved, which
    cost no memory: they are the module's own tensors, not copies)."""

    def __init__(self):
        self.sizes = []
        self.params = []

    def __enter__(self):
        def pack(t):
            if isinstance(t, nn.Parameter):
                self.params.append(t)
            else:
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
    # What backward needs besides the parameters: the policy's and the reference's hidden rows and a few
    # numbers per row (targets, logsumexp, KL, ...); nothing of size [chunk, V] (CHUNK * BIG_V = 3.2M).
    bound = BIG_N * (2 * SMALL_H + 8)

    # The naive version saves at least one full [N, V] tensor, so this check can fail.
    with _SavedSizes() as naive:
        _naive_logp(hidden, head).gather(-1, targets[:, None]).sum()
    assert max(naive.sizes) >= BIG_N * BIG_V

    with _SavedSizes() as rec:
        lp = token_logprobs(hidden, head, targets, chunk_size=CHUNK).sum()
    # Total, not just max: un-checkpointed chunks would each save [chunk, V].
    assert sum(rec.sizes) <= bound, max(rec.sizes)
    assert all(any(p is q for q in head.parameters()) for p in rec.params)

    with _SavedSizes() as rec:
        kl = reverse_kl(hidden, head, ref_hidden, ref_head, chunk_size=CHUNK).sum()
    assert sum(rec.sizes) <= bound, max(rec.sizes)
    assert all(any(p is q for q in head.parameters()) for p in rec.params)

    with _SavedSizes() as rec:
        fkl = forward_kl(hidden, head, ref_hidden, ref_head, chunk_size=CHUNK).sum()
    assert sum(rec.sizes) <= bound, max(rec.sizes)

    # Backward still works (recomputes one chunk at a time).
    (lp + kl + fkl).backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()


class _LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors that the ops run while active create and keep alive, in forward and in
    backward (which runs on this thread on CPU). A storage counts from the op that creates it until it is
    freed; views and in-place results are not new storages. Temporaries inside one op are not seen."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._ids = set()

    def _free(self, key, nbytes):
        self._ids.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self._ids and key not in inputs:
                    self._ids.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out


BUFFER = CHUNK * BIG_V * 4  # bytes of one [chunk, V] float32 tensor
SLACK = BUFFER // 20  # hidden-sized gradients, per-row statistics


def _fused_call(name, hidden, head, ref_hidden, ref_head, targets):
    if name == "token_logprobs":
        return (token_logprobs(hidden, head, targets, chunk_size=CHUNK),)
    if name == "token_logprobs_and_reverse_kl":
        return token_logprobs_and_reverse_kl(hidden, head, targets, ref_hidden, ref_head, chunk_size=CHUNK)
    kl = {"reverse_kl": reverse_kl, "forward_kl": forward_kl}[name]
    return (kl(hidden, head, ref_hidden, ref_head, chunk_size=CHUNK),)


@pytest.mark.parametrize("frozen_head", [False, True])
@pytest.mark.parametrize("name, buffers", [("token_logprobs", 1), ("reverse_kl", 2), ("forward_kl", 2),
                                           ("token_logprobs_and_reverse_kl", 2)])
def test_memory_peak_is_one_chunk_of_logits(name, buffers, frozen_head):
    """At most one [chunk, V] float32 buffer alive at a time (two for the KL: policy and reference logits), in
    forward and in backward, plus the head's weight gradient. The checkpointed chunks of the previous
    version held 4 to 5 such buffers in backward (and 5 in the KL's forward)."""
    hidden, head, ref_hidden, ref_head, targets = _big_setup()
    head.requires_grad_(not frozen_head)
    weight_grad = 0 if frozen_head else head.weight.numel() * 4

    with _LiveBytes() as mem:
        outs = _fused_call(name, hidden, head, ref_hidden, ref_head, targets)
        forward_peak = mem.peak
        sum(o.sum() for o in outs).backward()
    assert forward_peak <= buffers * BUFFER + SLACK, forward_peak / BUFFER
    assert mem.peak <= buffers * BUFFER + weight_grad + SLACK, mem.peak / BUFFER
    assert mem.peak >= buffers * BUFFER  # the tracker sees the chunk's logits
    assert hidden.grad is not None and (head.weight.grad is None) == frozen_head

    with torch.no_grad(), _LiveBytes() as mem:
        _fused_call(name, hidden, head, ref_hidden, ref_head, targets)
    assert mem.peak <= buffers * BUFFER + SLACK, mem.peak / BUFFER


def test_memory_peak_check_detects_autograd_through_chunks():
    # Sanity check of the test above: a head that is not an nn.Linear takes the general path (each chunk
    # checkpointed, autograd's log-softmax backward), which holds several [chunk, V] buffers in backward.
    hidden, head, _, _, targets = _big_setup()
    wrapped = nn.Sequential(head)
    with _LiveBytes() as mem:
        token_logprobs(hidden, wrapped, targets, chunk_size=CHUNK).sum().backward()
    assert mem.peak > 3 * BUFFER, mem.peak / BUFFER


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
