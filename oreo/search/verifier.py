"""A verifier read off the policy's own likelihood: a logistic regression of a response's outcome on statistics
of its step log-probabilities, fitted on the buffer's graded samples (``value=verifier``).

On the embedded task the learned values (OREO's, a PRM) rank a problem's right samples above its wrong ones
barely better than chance and fall as N grows in best-of-N, while the policy's own log-probability of each
step already tells a wrong line (an unlikely one) from a right one (``experiments/results/value_designs.md``).
This verifier keeps that knowledge and learns only how to weigh it: five parameters over

    mean step log-prob, lowest step log-prob, last step log-prob, number of steps,

standardised on the fitting data. Its score, in (0, 1), is the fitted probability that the response (or the
partial one, for step-level search) is right.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from oreo.atomic_write import write_atomically
from oreo.search.value import step_logprobs
from oreo.types import Context

FEATURES = ("mean_step", "min_step", "last_step", "n_steps")
VERIFIER_FILE = "verifier.json"


def likelihood_features(step_lp: list[float]) -> list[float]:
    """``FEATURES`` of one response from its per-step log-probs (all zero for a response with no step)."""
    if not step_lp:
        return [0.0] * len(FEATURES)
    return [sum(step_lp) / len(step_lp), min(step_lp), step_lp[-1], float(len(step_lp))]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3) -> tuple[list, float, list, list]:
    """``(weights, bias, mean, std)`` of a logistic regression of ``y`` [N] on the columns of ``x`` [N, F],
    standardised (``mean``, ``std``), with an L2 penalty ``l2`` on the weights, by L-BFGS."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = z @ w[:-1] + w[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + l2 * w[:-1].square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    w = w.detach()
    return w[:-1].tolist(), float(w[-1]), mean.tolist(), std.tolist()


@dataclass
class LikelihoodVerifier:
    weights: list[float]   # one per feature, on standardised features
    bias: float
    mean: list[float]      # the fitting data's feature means and standard deviations
    std: list[float]
    policy: str = ""       # the policy whose log-probs it was fitted on
    n_fit: int = 0         # samples it was fitted on

    @classmethod
    def fit(cls, step_lps: list[list[float]], labels: list[bool], *, l2: float = 1e-3, policy: str = "") \
            -> LikelihoodVerifier:
        """Logistic regression (``fit_logistic``) of ``labels`` on the features of ``step_lps``."""
        if len(set(labels)) < 2:
            raise ValueError(f"the verifier needs right and wrong samples to fit; got {len(labels)} samples, "
                             f"{sum(labels)} right")
        x = torch.tensor([likelihood_features(s) for s in step_lps], dtype=torch.float64)
        weights, bias, mean, std = fit_logistic(x, torch.tensor([float(v) for v in labels], dtype=torch.float64), l2)
        return cls(weights, bias, mean, std, policy, len(labels))

    def logit(self, step_lp: list[float]) -> float:
        f = likelihood_features(step_lp)
        return self.bias + sum(w * (v - m) / s for w, v, m, s in zip(self.weights, f, self.mean, self.std))

    def score(self, step_lp: list[float]) -> float:
        """P(right) in (0, 1)."""
        return 1.0 / (1.0 + math.exp(-self.logit(step_lp)))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / VERIFIER_FILE, json.dumps({"features": list(FEATURES), **asdict(self)}, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> LikelihoodVerifier:
        path = Path(folder) / VERIFIER_FILE
        data = json.loads(path.read_text())
        if tuple(data.pop("features", ())) != FEATURES:
            raise ValueError(f"{path}: fitted on other features than {FEATURES}; fit it again")
        return cls(**data)


class VerifierScorer:
    """Scores ``Context``s with a ``LikelihoodVerifier`` over ``policy``'s step log-probs (a search's scorer)."""

    def __init__(self, policy, encoder, verifier: LikelihoodVerifier, *, batch_size: int = 64):
        self.policy, self.encoder, self.verifier, self.batch_size = policy, encoder, verifier, batch_size

    def __call__(self, items: list[Context]) -> list[float]:
        per_step = step_logprobs(self.policy, self.encoder, items, batch_size=self.batch_size)
        return [self.verifier.score(s) for s in per_step]


def fit_on_buffer(policy, encoder, records, *, policy_name: str = "", batch_size: int = 64) -> LikelihoodVerifier:
    """A verifier fitted on the finished, graded single-turn ``records`` (``Trajectory``) of a buffer, with
    ``policy``'s step log-probs."""
    rows = [r for r in records if r.meta.get("finished", True) and r.steps and not r.observations]
    if not rows:
        raise ValueError("the buffer holds no finished single-turn samples to fit the verifier on")
    lps = step_logprobs(policy, encoder, [Context(r.prompt, tuple(r.steps)) for r in rows], batch_size=batch_size)
    return LikelihoodVerifier.fit(lps, [bool(r.correct) for r in rows], policy=policy_name)
