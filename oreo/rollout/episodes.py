"""Multi-turn rollouts: many environments step together, one batch of generations per turn.

Every live episode's context (prompt, turns so far, observations after them) goes into one sampler call;
each environment then takes its turn's action. An episode ends when the environment says so (success
or the step limit), or, as in the paper's collector (spec §4.4), when a turn has no ``Action:`` or is
cut by the token limit: such an episode is ``invalid``, its last turn (never taken) gets reward 0 and it
is not won. An episode keeps the environment's reward of every turn it took.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from oreo.tasks.agent import episode_record, format_observation, parse_action
from oreo.trajectory import Trajectory
from oreo.types import Choice, Context, Game


@dataclass
class Episode:
    game: Game
    repeat: int
    prompt: object
    steps: list[str] = field(default_factory=list)          # assistant turns
    observations: list[str] = field(default_factory=list)   # "Observation: …" after each turn
    rewards: list[float] = field(default_factory=list)      # the environment's reward for each turn
    won: bool = False
    invalid: bool = False       # a turn without an action, or cut by the token limit
    finished: bool = True       # the last turn ended with the end-of-turn token
    tokens: int = 0             # tokens generated, every candidate of a best-of-K choice included
    done: bool = False

    @property
    def context(self) -> Context:
        return Context(self.prompt, tuple(self.steps), tuple(self.observations))

    def record(self, task, *, round: int, meta: dict | None = None) -> Trajectory:
        """This episode as the trajectory record of collection ``round`` (``oreo.tasks.agent.episode_record``);
        ``meta`` gets ``finished``, ``invalid`` and ``n_tokens``, then ``meta``'s items."""
        return episode_record(task, self.game, f"r{round}-{self.game.id}-{self.repeat}", self.prompt, self.steps,
                              self.observations, self.rewards, won=self.won,
                              meta={"finished": self.finished, "invalid": self.invalid, "n_tokens": self.tokens,
                                    **(meta or {})})


def sampled_actions(sampler, *, temperature: float):
    """``act`` for ``run_episodes``: one sampled (``temperature`` 0: greedy) turn per context."""
    def act(contexts: list[Context], seed: int) -> list[Choice]:
        outs = sampler.generate(contexts, n=1, temperature=temperature, seed=seed)
        return [Choice(c.text, None, c.n_tokens, 1, c.truncated) for (c,) in outs]
    return act


def run_episodes(task, games: list[Game], act, *, repeats: int = 1, seed: int = 0, progress=None,
                 prefixes: list[list[str]] | None = None) -> list[Episode]:
    """Play each game ``repeats`` times; ``act(contexts, seed) → [Choice]`` picks every live episode's next
    turn in one call. With ``prefixes`` (one list of turns per game, e.g. a path a tree search chose), an
    episode first plays its game's turns as given, and ``act`` continues from there. Episodes come back game
    by game, repeats in order; deterministic given ``seed``."""
    episodes, envs, forced = [], [], []
    for g, game in enumerate(games):
        for r in range(repeats):
            env = task.make_env()
            first = env.reset(game)
            episodes.append(Episode(game, r, task.prompt(game, first)))
            envs.append(env)
            forced.append(list(prefixes[g]) if prefixes is not None else [])
    turn = 0
    try:
        while live := [i for i, e in enumerate(episodes) if not e.done]:
            for i in live:
                while forced[i] and not episodes[i].done:   # a given turn: played, no tokens spent
                    _take_turn(episodes[i], envs[i], Choice(forced[i].pop(0), None, 0, 0))
            acting = [i for i in live if not episodes[i].done]
            if acting:
                choices = act([episodes[i].context for i in acting], seed * 1_000_003 + turn)
                for i, choice in zip(acting, choices):
                    _take_turn(episodes[i], envs[i], choice)
            for i in live:
                if episodes[i].done and progress is not None:
                    progress.update(1)
            turn += 1
    finally:
        for env in envs:
            env.close()
    return episodes


def _take_turn(episode: Episode, env, choice: Choice) -> None:
    episode.steps.append(choice.response or "")
    episode.tokens += choice.tokens
    action = parse_action(choice.response or "")
    if choice.truncated or action is None:
        episode.invalid, episode.done = True, True
        episode.finished = not choice.truncated
        episode.rewards.append(0.0)
        return
    observation, reward, done, info = env.step(action)
    episode.observations.append(format_observation(observation))
    episode.rewards.append(float(reward))
    episode.won, episode.done = bool(info["won"]), bool(done)

