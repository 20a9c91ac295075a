"""Training methods: each an objective (``objective.py``) run by the one loop (``loop.py``).

``METHODS`` is the registry the pipeline reads: a method's objective, the dataclass of its config
section (besides ``train``), which records it trains on, the seed offset it trains with, whether it is
anchored to a frozen reference (the policy it starts from, cached log-probs) and whether it trains a value model.
"""
from __future__ import annotations

from dataclasses import dataclass

from oreo.trainers.dpo import DPOConfig, DPOObjective
from oreo.trainers.kto import KTOConfig, KTOObjective
from oreo.trainers.oreo import OREOConfig, OREOObjective
from oreo.trainers.prm import PRMConfig, PRMObjective
from oreo.trainers.sft import SFTConfig, SFTObjective
from oreo.trainers.simpo import SimPOConfig, SimPOObjective
from oreo.trainers.step_apo import StepAPOConfig, StepAPOObjective


@dataclass(frozen=True)
class Method:
    objective: type
    config: type
    data: str                 # teacher: the task's SFT records | correct: the buffer's correct records | buffer: all
    # what its stages add to the run's seed before they train (recorded in run.json with the stage's settings): its
    # own, never another's (2 is collect's, oreo.stages.KINDS) nor renumbered, so a new method re-seeds no other
    seed: int
    reference: bool = False   # anchored to a frozen copy of the policy it starts from
    value: bool = False       # trains a value model beside the policy (warm-started from a given one)
    policy_dir: str = ""      # where the trained policy lands inside the stage's checkpoint folder
    policy: bool = True       # trains the policy (evaluated after its stage); false: a value model only


METHODS = {
    "sft": Method(SFTObjective, SFTConfig, "teacher", seed=1),
    "rft": Method(SFTObjective, SFTConfig, "correct", seed=3),
    "oreo": Method(OREOObjective, OREOConfig, "buffer", seed=4, reference=True, value=True, policy_dir="policy"),
    "dpo": Method(DPOObjective, DPOConfig, "buffer", seed=5, reference=True),
    "kto": Method(KTOObjective, KTOConfig, "buffer", seed=6, reference=True),
    # a process value model on the buffer's inferred per-step targets (ReST-MCTS*), from the SFT policy
    "prm": Method(PRMObjective, PRMConfig, "buffer", seed=7, value=True, policy=False),
    # CPL's Step-APO (alpha=0: Step-DPO) on the sibling plan steps of the buffer's plan-search trees
    "step_apo": Method(StepAPOObjective, StepAPOConfig, "buffer", seed=8, reference=True),
    # SimPO: DPO's pairs, a length-normalised reward and a margin, no reference
    "simpo": Method(SimPOObjective, SimPOConfig, "buffer", seed=9),
}
