"""ALFWorld (Shridhar et al. 2021): text household games as an agent task, played as the paper did.

Data: a folder holding ``json_2.1.1/{valid_seen, valid_unseen, valid_train}`` (or the ``alfworld.tar.gz``
that holds it, unpacked once into ``$OREO_CACHE`` or ``~/.cache/oreo``). A game is one trial folder with
``traj_data.json`` and ``game.tw-pddl``; as in the alfworld package, only games marked solvable and not
"movable"/"Sliced" are played (140 seen, 134 unseen, 200 train).

Engine: alfworld 0.4.2, text only (``pip install "oreo[alfworld]"``). Its ``AlfredTWEnv`` registers a
whole split with ``textworld.gym`` and steps batches in subprocesses; we build what that gym env holds
inside, directly: textworld's ``PddlEnv`` behind alfworld's ``AlfredDemangler`` (object ids become
"apple 1"), one game per reset, in process. ``PddlEnv`` takes the PDDL domain and the grammar from the
game file itself, so the games' older grammar ("put X in/on Y") is what the agent sees and types;
``logic_*`` folders and alfworld's bundled logic ("move X to Y") are not used.

Expert: alfworld's hand-coded expert (``expert_type: handcoded``), driven as its ``AlfredExpert`` wrapper
does (see there), with two differences. (1) The 0.4.2 expert emits and looks for "move X to Y"; we show
it the admissible "put X in/on Y" commands in that form and map its choice back (its own bookkeeping
still needs the "put" command that was taken, which is what it gets). (2) ``AlfredExpert`` answers
"look" before the first step (a no-op here); ours acts from the first observation. The expert draws
from the global ``random`` module: each environment swaps in its own generator state, seeded by the
seed and the game id, so expert episodes are deterministic and leave ``random`` untouched.

Format: as ETO's ALFWorld loader (Song et al. 2024), whose SFT data the paper trains on: the first
observation drops the "-= Welcome to TextWorld, ALFRED! =-" paragraph and joins the rest with single
newlines; "You arrive at loc N. " is cut from observations. "Nothing happens." is the engine's answer
to an inadmissible command (ETO's instruction says "Nothing happened").

Cost (2 CPU cores): a reset takes 1-2 s (the game's PDDL is translated for the planner twice: by
``load`` and by ``reset``), a step ~50 ms. Every ``PddlEnv`` loads a private copy of fast-downward's
planner library (~7 MB resident); unloading it crashes the interpreter at exit, so a closed
environment hands its engine to a pool that the next environment reuses. Not thread-safe (the PDDL
translator swaps ``sys.stdout``).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from oreo.config import at_least, validate
from oreo.tasks.agent import episode_record, expert_turns, format_prompt
from oreo.trajectory import Trajectory
from oreo.types import Game

# ETO's ALFWorld instruction, verbatim with its typos ("task {obj} from {recep}", "envrionment"): the
# first version of eval_agent/prompt/instructions/alfworld_inst.txt in github.com/Yifan-Song793/ETO
# (commit 9cd8087; later versions fix "task" to "take" and add a final newline), which is also the
# instruction turn of ETO's SFT trajectories. "\\n" is a backslash and an n, as in that file.
ETO_INSTRUCTION = (
    "Interact with a household to solve a task. Imagine you are an intelligent agent in a household "
    "environment and your target is to perform actions to complete the task goal. At the beginning of "
    "your interactions, you will be given the detailed description of the current environment and your "
    "goal to accomplish. \n"
    "For each of your turn, you will be given the observation of the last turn. You should first think "
    "about the current condition and plan for your future actions, and then output your action in this "
    "turn. Your output must strictly follow this format:\"Thought: your thoughts.\\nAction: your next "
    "action\".\n"
    "\n"
    "The available actions are:\n"
    "1. go to {recep}\n"
    "2. task {obj} from {recep}\n"
    "3. put {obj} in/on {recep}\n"
    "4. open {recep}\n"
    "5. close {recep}\n"
    "6. toggle {obj} {recep}\n"
    "7. clean {obj} with {recep}\n"
    "8. heat {obj} with {recep}\n"
    "9. cool {obj} with {recep}\n"
    "where {obj} and {recep} correspond to objects and receptacles.\n"
    "After your each turn, the environment will give you immediate feedback based on which you plan your "
    "next few steps. if the envrionment output \"Nothing happened\", that means the previous action is "
    "invalid and you should try more options.\n"
    "\n"
    "Your response should use the following format:\n"
    "\n"
    "Thought: <your thoughts>\n"
    "Action: <your next action>"
)

SPLITS = {"seen": "valid_seen", "unseen": "valid_unseen", "train": "valid_train"}
KINDS = {  # the task type (the game folder's name up to the first "-") → the goal kind
    "pick_and_place_simple": "put", "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "heat", "pick_cool_then_place_in_recep": "cool",
    "look_at_obj_in_light": "examine", "pick_two_obj_and_place": "puttwo",
}
WELCOME = "-= Welcome to TextWorld, ALFRED! =-\n\n"
_ARRIVE = re.compile(r"^You arrive at loc \d+\. ")
_PUT = re.compile(r"^put (.+) in/on (.+)$")


# ---------------------------------------------------------------------------------------------- data

def alfworld_data_dir(path: str | os.PathLike) -> Path:
    """The folder that holds ``json_2.1.1``: ``path`` itself, its ``alfworld/`` child, or, for a
    ``.tar.gz``, its unpacked copy in the cache (unpacked once, into a temporary folder renamed into
    place, so an interrupted unpack is never taken for a complete one)."""
    path = Path(path).expanduser()
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        path = _unpacked(path)
    for root in (path, path / "alfworld"):
        if (root / "json_2.1.1").is_dir():
            return root
    raise FileNotFoundError(f"alfworld: no json_2.1.1 folder in {path} (expected the ALFWorld data folder "
                            f"or alfworld.tar.gz; see the alfworld section of the data README)")


def _unpacked(archive: Path) -> Path:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("OREO_CACHE") or Path.home() / ".cache" / "oreo") / "alfworld"
    target = cache / f"{archive.name.split('.')[0]}-{digest}"
    if not target.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp_", dir=cache))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # else another process finished first: use its copy
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _split_dir(data_dir: Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"alfworld: unknown split {split!r}; expected one of {sorted(SPLITS)}")
    folder = data_dir / "json_2.1.1" / SPLITS[split]
    if not folder.is_dir():
        raise FileNotFoundError(f"alfworld: split {split!r} has no folder {folder}")
    return folder


def _game(folder: Path, split: str, trial: Path) -> Game:
    """The game of one trial folder; raises (naming the path) if it cannot be played."""
    name = trial.relative_to(folder).as_posix()
    spec = trial / "game.tw-pddl"
    if not spec.is_file():
        raise FileNotFoundError(f"alfworld: game {split}/{name} has no game file {spec}")
    if "movable" in name or "Sliced" in name or not json.loads(spec.read_text()).get("solvable"):
        raise ValueError(f"alfworld: game {split}/{name} is not playable (movable, sliced or unsolvable): {spec}")
    return Game(id=f"{split}/{name}", split=split, kind=KINDS[name.split("-", 1)[0]], spec=str(spec))


def alfworld_games(data_dir: str | os.PathLike, split: str) -> list[Game]:
    """The playable games of a split (``seen``, ``unseen`` or ``train``), sorted by id."""
    folder = _split_dir(Path(data_dir), split)
    games = []
    for traj in sorted(folder.rglob("traj_data.json")):
        try:
            games.append(_game(folder, split, traj.parent))
        except (FileNotFoundError, ValueError):
            continue
    return games


def alfworld_game(data_dir: str | os.PathLike, game_id: str) -> Game:
    """One game by id (``"<split>/<task folder>/<trial folder>"``)."""
    split, _, name = game_id.partition("/")
    folder = _split_dir(Path(data_dir), split)
    if not (folder / name / "traj_data.json").is_file():
        raise FileNotFoundError(f"alfworld: no game {game_id!r} (no {folder / name / 'traj_data.json'})")
    return _game(folder, split, folder / name)


# ----------------------------------------------------------------------------------------- environment

_IDLE_ENGINES: list = []  # engines of closed environments, for the next ones (see the module docstring)


def _engine():
    if _IDLE_ENGINES:
        return _IDLE_ENGINES.pop()
    try:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
        from textworld.envs.pddl import PddlEnv
    except ImportError as e:
        raise ImportError(f"alfworld: {e}; install the extra: pip install \"oreo[alfworld]\"") from None
    infos = textworld.EnvInfos(feedback=True, won=True, admissible_commands=True, facts=True)
    return AlfredDemangler(PddlEnv(infos))


class AlfworldEnv:
    """One ALFWorld game at a time (the ``oreo.tasks.agent.Env`` protocol)."""

    def __init__(self, max_steps: int = 40, seed: int = 0):
        self.max_steps = max_steps
        self.seed = seed
        self._engine = None
        self._state = None
        self._steps = 0
        self._done = True
        self._expert = None
        self._unseen: list[tuple[dict, str]] = []  # (state, action that led to it) the expert has not read
        self._expert_next = None
        self._rng_state = None

    def reset(self, game: Game) -> str:
        if not Path(game.spec).is_file():
            raise FileNotFoundError(f"alfworld: game {game.id} has no game file {game.spec}")
        if self._engine is None:
            self._engine = _engine()
        from alfworld.agents.expert import HandCodedTWAgent

        self._engine.load(game.spec)
        self._state = self._engine.reset()
        self._steps, self._done = 0, False
        self._expert = HandCodedTWAgent(max_steps=200)  # AlfredExpert's settings
        self._expert.reset(game.spec)  # reads the task from traj_data.json next to the game file
        self._expert.observe(self._state["feedback"])
        self._rng_state = random.Random(f"{self.seed}/{game.id}").getstate()
        self._unseen, self._expert_next = [(self._state, "")], None
        return "\n".join(self._state["feedback"].removeprefix(WELCOME).split("\n\n"))

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        if self._done:
            raise RuntimeError("alfworld: step() without a game in progress; call reset(game) first")
        self._state, _, _ = self._engine.step(action)
        self._steps += 1
        won = bool(self._state["won"])
        self._done = won or self._steps >= self.max_steps
        self._unseen.append((self._state, action))
        info = {"won": won, "steps": self._steps, "limit": self._done and not won,
                "admissible_actions": list(self._state["admissible_commands"])}
        return _ARRIVE.sub("", self._state["feedback"]), float(won), self._done, info

    def expert_action(self) -> str | None:
        """The hand-coded expert's next action; ``None`` once it has given up or the episode is over.
        The expert reads the steps only when asked, so rollouts that never ask do not pay for it; it
        reads them in order, so its answers (and its random draws) are those of an expert that had
        followed every step."""
        if self._done:
            return None
        for state, last_action in self._unseen:
            self._expert_next = self._expert_act(state, last_action)
        self._unseen = []
        return self._expert_next

    def _expert_act(self, state: dict, last_action: str) -> str | None:
        """Advance the expert by one step (it tracks the episode) and return its next command
        ("look" where that is not admissible, as ``AlfredExpert`` does)."""
        from alfworld.agents.expert import HandCodedAgentFailed, HandCodedAgentTimeout

        if self._expert is None:
            return None
        admissible = state["admissible_commands"]
        as_move = {_PUT.sub(r"move \1 to \2", c): c for c in admissible}
        view = {**state, "admissible_commands": list(as_move)}
        outer = random.getstate()
        random.setstate(self._rng_state)
        try:
            action = self._expert.act(view, 0, view["won"], last_action)
        except (HandCodedAgentFailed, HandCodedAgentTimeout):
            self._expert = None
            return None
        finally:
            self._rng_state = random.getstate()
            random.setstate(outer)
        action = as_move.get(action, action)
        return action if action in admissible else "look"

    def close(self) -> None:
        if self._engine is not None:
            _IDLE_ENGINES.append(self._engine)
        self._engine = self._state = self._expert = self._expert_next = None
        self._unseen = []
        self._done = True


# ------------------------------------------------------------------------------------------------ task

def _default_data_dir() -> str:
    # not $ALFWORLD_DATA: importing alfworld sets that to its own download folder
    return os.environ.get("OREO_ALFWORLD_DATA", "../shared/data/alfworld.tar.gz")


@dataclass
class AlfworldConfig:
    """ALFWorld text games (pip install -e '.[alfworld]'): splits seen (valid_seen, 140 games), unseen
    (valid_unseen, 134) and train (the games under json_2.1.1/valid_train, or a full train folder put
    there); the hand-coded expert's episodes are the SFT data."""
    name: str = "alfworld"
    data_dir: str = field(default_factory=_default_data_dir)  # a folder with json_2.1.1/, or the .tar.gz holding it
    max_steps: int = at_least(1, 40)             # actions per episode (the paper's limit)
    chat: bool = True               # chat messages through the model's template; false: plain text (tiny models)
    limits: dict = field(default_factory=dict)  # {split: N}: the first N games of a split, after sorting
    seed: int = 0                   # the expert's random choices (in a run: the run's seed)

    def __post_init__(self):
        validate(self)


class AlfworldTask:
    """ALFWorld games (splits ``seen``, ``unseen``, ``train``) with the hand-coded expert's episodes
    on ``train`` as SFT data."""

    name = "alfworld"
    kind = "agent"
    reward_range = (0.0, 1.0)

    def __init__(self, cfg: AlfworldConfig):
        self.cfg = cfg
        self.data_dir = alfworld_data_dir(cfg.data_dir)
        self.max_steps = cfg.max_steps
        self.chat = cfg.chat
        self._games: dict[str, list[Game]] = {}

    def games(self, split: str) -> list[Game]:
        if split not in self._games:
            limit = self.cfg.limits.get(split)
            self._games[split] = alfworld_games(self.data_dir, split)[:limit]
        return self._games[split]

    problems = games

    def game(self, game_id: str) -> Game:
        return alfworld_game(self.data_dir, game_id)

    def make_env(self) -> AlfworldEnv:
        return AlfworldEnv(self.max_steps, seed=self.cfg.seed)

    def prompt(self, game: Game, first_observation: str):
        return format_prompt(ETO_INSTRUCTION, first_observation, chat=self.chat)

    def expert_records(self, split: str, seed: int) -> list[Trajectory]:
        """The hand-coded expert's episode on every game of ``split`` (reward: whether it won within
        ``max_steps``), as buffer records."""
        env, records = AlfworldEnv(self.max_steps, seed=seed), []
        try:
            for game in self.games(split):
                first = env.reset(game)
                actions, observations, rewards, done, won = [], [], [], False, False
                while not done and (action := env.expert_action()) is not None:
                    observation, reward, done, info = env.step(action)
                    actions.append(action)
                    observations.append(observation)
                    rewards.append(reward)
                    won = info["won"]
                records.append(episode_record(self, game, f"expert-{game.id}", self.prompt(game, first),
                                              *expert_turns(actions, observations), rewards, won=won,
                                              meta={"source": "expert"}))
        finally:
            env.close()
        return records

    def sft_records(self, rng_seed: int, n_per_problem: int = 1) -> list[Trajectory]:
        """One expert episode per train game (``n_per_problem`` is ignored: the expert rarely varies)."""
        return self.expert_records("train", rng_seed)
