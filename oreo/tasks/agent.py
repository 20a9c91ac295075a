"""Agent tasks: text environments, one interface (``oreo.types.Env``, ``oreo.types.AgentTask``), and the
multi-turn format the policy reads and writes.

An environment plays one ``Game`` at a time::

    observation = env.reset(game)
    observation, reward, done, info = env.step(action)

``info`` holds ``won`` (the goal is reached), ``steps`` (actions taken), ``limit`` (the episode ended at
the step limit) and ``admissible_actions`` (the commands valid now, or ``None`` where the environment
does not know them). ``reward`` is the action's reward; an episode's reward is the sum over its actions
(the built-in environments give 1 on success and 0 otherwise, when the episode ends; another may score
in [0, 1], or turn by turn). An episode ends on success or after ``max_steps`` actions.
``env.expert_action()`` is the built-in expert's next action from the current state.

The format follows the paper's ALFWorld runs (spec §4.4): the prompt is the task instruction, an "OK"
from the assistant and the first observation; then every assistant turn is ``"Thought: …\\nAction: …"``
(the thought is optional) and every environment turn is ``"Observation: …"``. A trajectory record
(``episode_record``, the one builder for expert and sampled episodes) keeps the turns as ``steps``, the
observations after them as ``observations`` (the last one too) and each turn's reward as
``step_rewards``; the encoder ends every turn with the end-of-turn token (``oreo.encode``).
"""
from __future__ import annotations

from oreo.trajectory import Trajectory
from oreo.types import Game

ACTION_PREFIX = "Action:"
OBSERVATION_PREFIX = "Observation: "


def parse_action(turn: str) -> str | None:
    """The command of an assistant turn: the first line after its last ``"Action:"``, stripped;
    ``None`` if the turn has none (the episode then ends as invalid, with reward 0)."""
    if ACTION_PREFIX not in turn:
        return None
    action = turn.rsplit(ACTION_PREFIX, 1)[1].strip().split("\n", 1)[0].strip()
    return action or None


def format_turn(action: str, thought: str | None = None) -> str:
    return (f"Thought: {thought}\n" if thought else "") + f"{ACTION_PREFIX} {action}"


def format_observation(text: str) -> str:
    return OBSERVATION_PREFIX + text.strip()


def format_prompt(instruction: str, first_observation: str, *, chat: bool) -> str | list[dict]:
    """The conversation before the first action: the instruction (user), "OK" (assistant) and the first
    observation (user), as chat messages, or as plain text for a model without a chat template."""
    if chat:
        return [{"role": "user", "content": instruction}, {"role": "assistant", "content": "OK"},
                {"role": "user", "content": first_observation}]
    return f"{instruction}\n{first_observation}\n"


def episode_record(task, game: Game, record_id: str, prompt, steps: list[str], observations: list[str],
                   rewards: list[float], *, won: bool, meta: dict | None = None) -> Trajectory:
    """The trajectory record of an episode, the expert's or a sampled one: the assistant turns as ``steps``,
    the observations after them (formatted; the last one too), each turn's reward from the environment as
    ``step_rewards`` (0 for a turn the environment never took), the episode's reward as ``reward`` (their
    sum, as the environment scored it: possibly fractional) and ``correct`` whether it was won.
    ``meta`` gets the game's ``kind`` and the number of ``turns``, then ``meta``'s items."""
    return Trajectory(id=record_id, task=task.name, problem_id=game.id, prompt=prompt, steps=list(steps),
                      observations=list(observations), reward=float(sum(rewards)), correct=bool(won),
                      answer=None, step_rewards=list(rewards),
                      meta={"kind": game.kind, "turns": len(steps), **(meta or {})})


def expert_turns(actions: list[str], observations: list[str]) -> tuple[list[str], list[str]]:
    """An expert's raw actions and observations as turns (no thoughts) and formatted observations."""
    return [format_turn(a) for a in actions], [format_observation(o) for o in observations]
