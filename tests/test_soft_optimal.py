"""OREO converges to the soft-optimal policy and value on a tabular tree MDP.

No language model: a complete K-ary tree of depth D whose edges are tokens.
Every internal node (prefix) has its own policy logits and its own scalar
value. Transitions are deterministic and the reward sits on the leaves, so
(γ = 1) the soft-optimal solution is, by backward recursion,

    V*(leaf) = R(leaf)
    V*(s)    = β · log Σ_a π_ref(a|s) · exp(V*(s·a)/β)  =  β · log E_{π_ref}[exp(R/β) | s]
    π*(a|s)  = π_ref(a|s) · exp((V*(s·a) − V*(s))/β)   ∝ π_ref(a|s) · exp(Q*(s,a)/β)

At (π*, V*) the value and policy residuals are zero on *every* path, so the
fixed point does not depend on how often the offline data visit a state, as
long as every (state, action) pair is visited at least once: the finite
dataset introduces no sampling error and the tolerances below are purely
optimisation error.
"""

import pytest
import torch

from oreo.losses import oreo_policy_loss, value_loss


@pytest.fixture(autouse=True)
def single_thread():
    # The ops are tiny; intra-op threading only adds contention (5x slower on 2 busy cores).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Tree:
    """Complete K-ary tree of depth D; nodes numbered breadth-first.

    Internal nodes (depth < D) are 0 … N−1, with children of n at K·n+1 … K·n+K.
    Leaves are N … N+K^D−1; leaf index = node − N.
    """

    def __init__(self, K: int, D: int, seed: int, ref_scale: float = 0.7):
        g = torch.Generator().manual_seed(seed)
        self.K, self.D = K, D
        self.N = (K**D - 1) // (K - 1)
        self.ref_logp = torch.log_softmax(ref_scale * torch.randn(self.N, K, generator=g, dtype=torch.float64), -1)
        # A few reward levels, so that V* is not just a function of P(R=1).
        self.R = torch.randint(0, 3, (K**D,), generator=g).double() / 2

    def child(self, node, a):
        return self.K * node + 1 + a

    def soft_optimum(self, beta: float, state_depths=None):
        """V*[N] and π*[N, K] at every internal node (token-level recursion)."""
        K, N = self.K, self.N
        V = torch.zeros(N + K**self.D, dtype=torch.float64)
        V[N:] = self.R
        for node in reversed(range(N)):
            q = V[self.child(node, torch.arange(K))]
            V[node] = beta * torch.logsumexp(self.ref_logp[node] + q / beta, 0)
        kids = self.child(torch.arange(N)[:, None], torch.arange(K))
        pi = torch.exp(self.ref_logp + (V[kids] - V[:N, None]) / beta)
        return V[:N], pi

    def sample(self, n: int, seed: int):
        """Trajectories from π_ref: nodes [n, D] (state before each token), actions [n, D], rewards [n]."""
        g = torch.Generator().manual_seed(seed)
        node = torch.zeros(n, dtype=torch.long)
        nodes, actions = [], []
        for _ in range(self.D):
            a = torch.multinomial(self.ref_logp[node].exp(), 1, generator=g).squeeze(-1)
            nodes.append(node)
            actions.append(a)
            node = self.child(node, a)
        return torch.stack(nodes, 1), torch.stack(actions, 1), self.R[node - self.N]


def _pad_both_sides(nodes, actions, state_mask, width: int, seed: int):
    """Shift each row right by a random 0…width pads: left, right and mixed padding in one batch.

    Pad positions get node 0 / action 0, so their log-ratios and values are real,
    non-zero numbers that only the masks remove.
    """
    B, T = nodes.shape
    shift = torch.randint(0, width + 1, (B,), generator=torch.Generator().manual_seed(seed))
    cols = torch.arange(T)[None, :] + shift[:, None]
    out = []
    for x in (nodes, actions, state_mask, torch.ones_like(state_mask)):
        padded = torch.zeros(B, T + width, dtype=x.dtype)
        padded.scatter_(1, cols, x)
        out.append(padded)
    return out  # nodes, actions, state_mask, action_mask


def _train(tree, nodes, actions, rewards, state_mask, action_mask, *, beta, steps, lr):
    """Joint Adam on value_loss + oreo_policy_loss (no KL); returns (V table, log π table)."""
    logits = tree.ref_logp.clone().requires_grad_(True)  # π_θ ← π_ref
    V = torch.zeros(tree.N, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits, V], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 20)
    for _ in range(steps):
        logp = torch.log_softmax(logits, -1)
        logratio = (logp - tree.ref_logp)[nodes, actions]  # [B, T]
        values = V[nodes]
        loss = value_loss(values, logratio, action_mask, state_mask, rewards, beta=beta) + oreo_policy_loss(
            logratio, values, action_mask, state_mask, rewards, beta=beta
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return V.detach(), torch.log_softmax(logits.detach(), -1)


# Observed error after 300 steps is ~1e-7 (float64); the tolerance leaves a wide margin.
TOL = 1e-3


def test_token_level_converges_to_soft_optimum():
    beta = 0.5
    tree = Tree(K=3, D=3, seed=0)
    nodes, actions, rewards = tree.sample(4000, seed=1)
    # Every (state, action) pair must be in the data for the optimum to be identified.
    assert torch.unique(nodes * tree.K + actions).numel() == tree.N * tree.K
    state_mask = torch.ones_like(nodes, dtype=torch.bool)  # token level: every action is a state
    action_mask = torch.ones_like(state_mask)

    V, logp = _train(tree, nodes, actions, rewards, state_mask, action_mask, beta=beta, steps=300, lr=0.05)
    V_star, pi_star = tree.soft_optimum(beta)

    assert (V - V_star).abs().max() < TOL
    assert (logp.exp() - pi_star).abs().max() < TOL
    # The optimum is far from π_ref, so the check is not vacuous.
    assert (tree.ref_logp.exp() - pi_star).abs().max() > 0.1


def test_step_level_converges_to_step_soft_optimum():
    """Two tokens per step: states only at even depths, step action = token pair.

    π*(a1 a2|s) ∝ π_ref(a1 a2|s) exp(V*(s·a1·a2)/β) at step states, and V* there
    equals the token-level recursion (soft values compose over a step). Rows are
    padded on random sides to exercise the padding-independence end to end.
    """
    beta = 0.5
    tree = Tree(K=2, D=4, seed=2)
    nodes, actions, rewards = tree.sample(2000, seed=3)
    assert torch.unique(nodes * tree.K + actions).numel() == tree.N * tree.K
    state_mask = torch.arange(tree.D).expand_as(nodes) % 2 == 0
    step_states = torch.unique(nodes[state_mask])
    nodes, actions, state_mask, action_mask = _pad_both_sides(nodes, actions, state_mask, width=2, seed=4)

    V, logp = _train(tree, nodes, actions, rewards, state_mask, action_mask, beta=beta, steps=300, lr=0.05)
    V_star, pi_star = tree.soft_optimum(beta)

    K = tree.K
    a1 = torch.arange(K)[:, None]
    a2 = torch.arange(K)[None, :]
    for s in step_states.tolist():
        mid = tree.child(s, a1).expand(K, K)  # the non-state prefix after the first token
        step_p = (logp[s][:, None] + logp[mid, a2]).exp()
        step_p_star = pi_star[s][:, None] * pi_star[mid, a2]
        assert abs(V[s] - V_star[s]) < TOL, (s, V[s], V_star[s])
        assert (step_p - step_p_star).abs().max() < TOL
