"""An embedded household environment in the spirit of ALFWorld, small enough for a tiny model on a CPU.

Each game is generated from a seed: a room (kitchen, bathroom, bedroom, living room) with a few
receptacles (some of them closed: cabinets, drawers, fridge, microwave) and objects placed on them,
and a goal of one of five kinds::

    put      "put a mug in shelf."              find it, take it, put it in/on a receptacle of that type
    clean    "put a clean apple in fridge."     ... and clean it with the sinkbasin first
    heat     "put a hot egg in diningtable."    ... heat it with the microwave
    cool     "put a cool tomato in countertop." ... cool it with the fridge
    examine  "look at book under the desklamp." take it to the desklamp and use the lamp

The commands and the observations follow ALFWorld's text games ("go to fridge 1", "open fridge 1",
"take apple 1 from fridge 1", "put apple 1 in/on countertop 1", "clean apple 1 with sinkbasin 1",
"use desklamp 1", "look", "inventory"; "Nothing happened." for anything else). Objects are where
their kind usually is (apples in the fridge or on a counter, books on desks and shelves); nothing but
the observations tells the agent where they are.

The built-in expert does not peek either: it looks into the receptacles in the order the first
observation lists them, opening closed ones, until it finds the object, then does what the goal needs
(an agent that learned where things usually are could search faster). Like the arithmetic task's teacher it is imperfect
(``teacher_error_rate``: at random it puts the object in a wrong place; ``teacher_skip_rate``: when it
finds the object inside the very appliance the goal needs, it takes it as already clean/hot/cool and
skips that step). The skip is systematic: above 0.5, imitating the expert makes it the most likely
action, so greedy decoding inherits it and only the outcome reward says it is wrong.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from oreo.config import ConfigError, at_least, between, validate
from oreo.tasks.agent import episode_record, expert_turns, format_prompt
from oreo.trajectory import Trajectory
from oreo.types import Game

KINDS = ("put", "clean", "heat", "cool", "examine")
SPLITS = ("train", "test")
OPENABLE = {"cabinet", "drawer", "fridge", "microwave"}
APPLIANCE = {"clean": "sinkbasin", "heat": "microwave", "cool": "fridge"}
STATE = {"clean": "clean", "heat": "hot", "cool": "cool"}
VERB = {"clean": ("clean", "You clean"), "heat": ("heat", "You heat"), "cool": ("cool", "You cool")}

ROOMS = {
    "kitchen": ["countertop", "cabinet", "drawer", "fridge", "microwave", "sinkbasin", "diningtable", "shelf"],
    "bathroom": ["countertop", "cabinet", "drawer", "sinkbasin", "toilet", "shelf"],
    "bedroom": ["desk", "drawer", "shelf", "bed", "sidetable", "dresser"],
    "livingroom": ["sofa", "coffeetable", "sidetable", "cabinet", "armchair", "shelf"],
}
# object → the receptacles it is usually found on, most likely first (its weight halves down the list)
PLACES = {
    "apple": ["fridge", "countertop", "diningtable"], "egg": ["fridge", "countertop", "diningtable"],
    "tomato": ["fridge", "countertop", "diningtable"], "potato": ["fridge", "countertop", "cabinet"],
    "bread": ["countertop", "diningtable", "fridge"], "mug": ["cabinet", "countertop", "sinkbasin", "microwave"],
    "plate": ["cabinet", "sinkbasin", "diningtable", "fridge"], "knife": ["drawer", "countertop", "sinkbasin"],
    "cup": ["cabinet", "sinkbasin", "microwave", "shelf"],
    "soapbar": ["sinkbasin", "countertop", "cabinet"], "cloth": ["cabinet", "sinkbasin", "drawer", "countertop"],
    "candle": ["shelf", "countertop", "toilet", "cabinet"], "spraybottle": ["cabinet", "toilet", "shelf"],
    "book": ["desk", "shelf", "bed", "sidetable"], "pen": ["desk", "drawer", "sidetable"],
    "cellphone": ["bed", "desk", "sidetable", "dresser"], "alarmclock": ["dresser", "sidetable", "desk"],
    "keychain": ["drawer", "dresser", "coffeetable", "sidetable"], "cd": ["desk", "drawer", "shelf"],
    "remotecontrol": ["coffeetable", "sofa", "armchair", "sidetable"], "vase": ["shelf", "coffeetable", "sidetable"],
    "newspaper": ["sofa", "coffeetable", "armchair"], "box": ["coffeetable", "shelf", "cabinet"],
}
OBJECTS = {
    "kitchen": ["apple", "egg", "tomato", "potato", "bread", "mug", "plate", "knife", "cup"],
    "bathroom": ["soapbar", "cloth", "candle", "spraybottle", "cup"],
    "bedroom": ["book", "pen", "cellphone", "alarmclock", "keychain", "cd"],
    "livingroom": ["remotecontrol", "keychain", "vase", "newspaper", "box", "book"],
}
# which goals an object can have (besides put)
CAN = {
    "clean": {"apple", "egg", "tomato", "potato", "mug", "plate", "knife", "cup", "soapbar", "cloth"},
    "heat": {"apple", "egg", "tomato", "potato", "bread", "mug", "plate", "cup"},
    "cool": {"apple", "egg", "tomato", "potato", "bread", "mug", "plate", "cup"},
    "examine": {"book", "pen", "cellphone", "alarmclock", "keychain", "cd", "remotecontrol", "vase", "newspaper",
                "box"},
}
LAMP_PLACES = ["desk", "sidetable", "dresser"]

INSTRUCTION = "Interact with a household to solve a task. Each turn, give one action after \"Action:\"."


@dataclass
class HouseholdConfig:
    """The embedded household environment: generated rooms, receptacles and objects; goals put / clean /
    heat / cool / examine; an imperfect built-in expert for SFT."""
    name: str = "household"
    seed: int = 0                    # the generator's (in a run: the run's seed)
    n_train: int = at_least(1, 400)               # training games: expert episodes (SFT), rollouts (OREO, RFT)
    n_test: int = at_least(0, 200)                # held-out games (other seeds of the same generator)
    max_steps: int = at_least(1, 20)              # actions per episode
    min_receptacles: int = at_least(1, 3)
    max_receptacles: int = at_least(1, 5)
    distractors: int = at_least(0, 2)             # other objects in the room
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    # the expert puts the object in a wrong place (random: greedy decoding averages it out)
    teacher_error_rate: float = between(0.0, 1.0, 0.1)
    # it skips cleaning/heating/cooling an object found inside that appliance (systematic)
    teacher_skip_rate: float = between(0.0, 1.0, 0.7)
    # chat messages (models with a chat template) or plain-text prompts (the tiny model)
    chat: bool = False

    def __post_init__(self):
        validate(self)
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise ConfigError("kinds", f"unknown {sorted(unknown)}; known: {list(KINDS)}")
        if self.min_receptacles > self.max_receptacles:
            raise ConfigError("min_receptacles", f"must be <= max_receptacles ({self.max_receptacles}), "
                                                 f"got {self.min_receptacles}")


@dataclass
class Scene:
    """A generated game: the room, its receptacles (in the order the first observation lists them), the
    contents of each, which are closed, and the goal."""
    room: str
    receptacles: list[str]
    contents: dict[str, list[str]]
    closed: set[str]
    kind: str
    target: str          # the object type of the goal ("apple")
    place: str           # put/clean/heat/cool: the receptacle type to put it in; examine: "desklamp"
    lamp_on: str | None = None   # the receptacle holding the desklamp (examine)

    @property
    def goal(self) -> str:
        if self.kind == "examine":
            return f"look at {self.target} under the desklamp."
        if self.kind == "put":
            return f"put a {self.target} in {self.place}."
        return f"put a {STATE[self.kind]} {self.target} in {self.place}."


def _weighted_place(rng: random.Random, places: list[str]) -> str:
    return rng.choices(places, weights=[2.0 ** -i for i in range(len(places))])[0]


def _possible(kind: str, room: str) -> bool:
    if kind == "examine" and not set(LAMP_PLACES) & set(ROOMS[room]):
        return False
    if kind in APPLIANCE and APPLIANCE[kind] not in ROOMS[room]:
        return False
    return any(kind == "put" or o in CAN[kind] for o in OBJECTS[room])


def generate_scene(seed: int, cfg: HouseholdConfig) -> Scene:
    """The game of ``seed``: a room whose receptacles make the drawn goal possible."""
    rng = random.Random(seed)
    while True:
        kind = rng.choice(cfg.kinds)  # the kind first, then a room where it is possible: kinds stay balanced
        room = rng.choice([r for r in sorted(ROOMS) if _possible(kind, r)])
        target = rng.choice([o for o in OBJECTS[room] if kind == "put" or o in CAN[kind]])
        n = rng.randint(cfg.min_receptacles, min(cfg.max_receptacles, len(ROOMS[room])))
        types = set(rng.sample(ROOMS[room], n))
        types.add(_weighted_place(rng, [p for p in PLACES[target] if p in ROOMS[room]]))
        if kind in APPLIANCE:
            types.add(APPLIANCE[kind])
        if kind == "examine" and not types & set(LAMP_PLACES):
            types.add(rng.choice([p for p in LAMP_PLACES if p in ROOMS[room]]))
        names = []
        for t in sorted(types):
            count = 2 if t in ("cabinet", "drawer", "shelf") and rng.random() < 0.5 else 1
            names += [f"{t} {i}" for i in range(1, count + 1)]
        contents = {r: [] for r in names}
        # the target where its kind is usually found, among the receptacles here
        present = [p for p in PLACES[target] if p in types]
        if not present:
            continue
        home = _weighted_place(rng, present)
        contents[rng.choice([r for r in names if r.split()[0] == home])].append(f"{target} 1")
        others = [o for o in OBJECTS[room] if o != target]
        for obj in rng.sample(others, min(cfg.distractors, len(others))):
            spots = [r for r in names if r.split()[0] in PLACES[obj]] or names
            contents[rng.choice(spots)].append(f"{obj} 1")
        place, lamp_on = "desklamp", None
        if kind == "examine":
            lamp_on = rng.choice([r for r in names if r.split()[0] in LAMP_PLACES])
            contents[lamp_on].append("desklamp 1")
        else:
            options = sorted({r.split()[0] for r in names} - {home, "toilet"})
            if not options:
                continue
            place = rng.choice(options)
        closed = {r for r in names if r.split()[0] in OPENABLE}
        order = names[:]
        rng.shuffle(order)
        return Scene(room, order, contents, closed, kind, target, place, lamp_on)


def _listing(items: list[str]) -> str:
    if not items:
        return "nothing"
    named = [f"a {x}" for x in items]
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + f", and {named[-1]}"


class HouseholdEnv:
    """One game at a time: ``reset(game)``, then ``step(action)`` until done (see ``oreo.tasks.agent``)."""

    def __init__(self, cfg: HouseholdConfig):
        self.cfg = cfg
        self.max_steps = cfg.max_steps
        self.scene: Scene | None = None

    def reset(self, game: Game) -> str:
        self.scene = generate_scene(int(game.spec), self.cfg)
        self.game = game
        self.contents = {r: list(v) for r, v in self.scene.contents.items()}
        self.closed = set(self.scene.closed)
        self.at: str | None = None
        self.holding: str | None = None
        self.state: set[str] = set()   # what has been done to the held object: clean, hot, cool
        self.steps, self.won, self.done = 0, False, False
        self.visited: list[str] = []
        s = self.scene
        return (f"You are in the middle of a {s.room}. Looking quickly around you, you see "
                f"{_listing(s.receptacles)}.\nYour task is to: {s.goal}")

    # ------------------------------------------------------------------ dynamics
    def admissible_actions(self) -> list[str]:
        s, acts = self.scene, ["look", "inventory"]
        acts += [f"go to {r}" for r in s.receptacles if r != self.at]
        if self.at is not None:
            r = self.at
            if r in self.closed:
                acts.append(f"open {r}")
            elif r.split()[0] in OPENABLE:
                acts.append(f"close {r}")
            if r not in self.closed:
                if self.holding is None:
                    acts += [f"take {o} from {r}" for o in self.contents[r] if not o.startswith("desklamp")]
                else:
                    acts.append(f"put {self.holding} in/on {r}")
            for verb, appliance in APPLIANCE.items():
                if self.holding is not None and r.split()[0] == appliance:
                    acts.append(f"{verb} {self.holding} with {r}")
            if "desklamp 1" in self.contents.get(r, []):
                acts.append("use desklamp 1")
        return acts

    def _act(self, action: str) -> str:
        nothing = "Nothing happened."
        here = self.at
        if action == "look":
            return f"You are facing the {here}." if here else "You are in the middle of a room."
        if action == "inventory":
            return f"You are carrying: a {self.holding}." if self.holding else "You are not carrying anything."
        m = re.fullmatch(r"go to (\w+ \d)", action)
        if m:
            r = m.group(1)
            if r not in self.contents or r == here:
                return nothing
            self.at = r
            self.visited.append(r)
            # ALFWorld says "You arrive at loc N. " first; the paper's collector strips it (spec §4.4)
            if r in self.closed:
                return f"The {r} is closed."
            return f"On the {r}, you see {_listing(self.contents[r])}."
        m = re.fullmatch(r"(open|close) (\w+ \d)", action)
        if m:
            verb, r = m.groups()
            if r != here or r.split()[0] not in OPENABLE or (verb == "open") != (r in self.closed):
                return nothing
            if verb == "close":
                self.closed.add(r)
                return f"You close the {r}."
            self.closed.discard(r)
            return f"You open the {r}. In it, you see {_listing(self.contents[r])}."
        m = re.fullmatch(r"take (\w+ \d) from (\w+ \d)", action)
        if m:
            obj, r = m.groups()
            if r != here or r in self.closed or self.holding or obj not in self.contents[r] or obj == "desklamp 1":
                return nothing
            self.contents[r].remove(obj)
            self.holding, self.state = obj, set()
            return f"You pick up the {obj} from the {r}."
        m = re.fullmatch(r"put (\w+ \d) in/on (\w+ \d)", action)
        if m:
            obj, r = m.groups()
            if r != here or r in self.closed or obj != self.holding:
                return nothing
            self.contents[r].append(obj)
            self.holding = None
            s = self.scene
            if (s.kind != "examine" and obj.split()[0] == s.target and r.split()[0] == s.place
                    and (s.kind == "put" or STATE[s.kind] in self.state)):
                self.won = True
            return f"You put the {obj} in/on the {r}."
        m = re.fullmatch(r"(clean|heat|cool) (\w+ \d) with (\w+ \d)", action)
        if m:
            verb, obj, r = m.groups()
            if r != here or obj != self.holding or r.split()[0] != APPLIANCE[verb]:
                return nothing
            self.state.add(STATE[verb])
            return f"{VERB[verb][1]} the {obj} using the {r}."
        if action == "use desklamp 1":
            if here is None or "desklamp 1" not in self.contents[here]:
                return nothing
            s = self.scene
            if s.kind == "examine" and self.holding and self.holding.split()[0] == s.target:
                self.won = True
            return "You turn on the desklamp 1."
        return nothing

    def step(self, action: str) -> tuple[str, float, bool, dict]:
        if self.scene is None or self.done:
            raise RuntimeError("HouseholdEnv.step: call reset(game) first (the episode is over)")
        observation = self._act(action.strip())
        self.steps += 1
        limit = not self.won and self.steps >= self.max_steps
        self.done = self.won or limit
        info = {"won": self.won, "steps": self.steps, "limit": limit,
                "admissible_actions": None if self.done else self.admissible_actions()}
        return observation, float(self.won), self.done, info

    # ------------------------------------------------------------------ expert
    def expert_action(self) -> str | None:
        """The expert's next action from the current state (``None`` once the episode is over)."""
        return None if self.done else self._expert()

    def _expert(self, skip: bool = False, place: str | None = None) -> str:
        """The expert's policy; ``skip``: leave out cleaning/heating/cooling; ``place``: put the object
        in a receptacle of this type instead of the goal's (the teacher's two slips)."""
        s = self.scene
        if self.holding is None:
            return self._search_action()
        if s.kind == "examine":
            return "use desklamp 1" if self.at == s.lamp_on else f"go to {s.lamp_on}"
        if s.kind in APPLIANCE and STATE[s.kind] not in self.state and not skip:
            appliance = next(r for r in s.receptacles if r.split()[0] == APPLIANCE[s.kind])
            if self.at != appliance:
                return f"go to {appliance}"
            return f"{VERB[s.kind][0]} {self.holding} with {appliance}"
        dest = next(r for r in s.receptacles if r.split()[0] == (place or s.place))
        if self.at != dest:
            return f"go to {dest}"
        if dest in self.closed:
            return f"open {dest}"
        return f"put {self.holding} in/on {dest}"

    def _search_action(self) -> str:
        target = f"{self.scene.target} 1"
        if self.at is not None and self.at not in self.closed and target in self.contents[self.at]:
            return f"take {target} from {self.at}"
        nxt = self._search_order()[0]
        return f"open {nxt}" if nxt == self.at else f"go to {nxt}"

    def _search_order(self) -> list[str]:
        """Receptacles not yet looked into: the one the agent stands at first (it is closed), then in the
        order the first observation listed them."""
        s = self.scene
        seen = {r for r in self.visited if r not in self.closed}
        todo = [r for r in s.receptacles if r not in seen]
        return sorted(todo, key=lambda r: (r != self.at, s.receptacles.index(r)))

    def teacher_episode(self, game: Game,
                        rng: random.Random) -> tuple[str, list[str], list[str], bool, list[float]]:
        """Play ``game`` with the imperfect teacher: ``(first observation, actions, observations, won,
        rewards)``, a reward per action."""
        first = self.reset(game)
        s = self.scene
        found_in = next(r for r, v in s.contents.items() if f"{s.target} 1" in v)
        skip = (s.kind in APPLIANCE and found_in.split()[0] == APPLIANCE[s.kind]
                and rng.random() < self.cfg.teacher_skip_rate)
        wrong = sorted({r.split()[0] for r in s.receptacles} - {s.place, "toilet"})
        place = rng.choice(wrong) if wrong and s.kind != "examine" and \
            rng.random() < self.cfg.teacher_error_rate else None
        actions, observations, rewards = [], [], []
        while not self.done:
            action = self._expert(skip, place)
            observation, reward, _, _ = self.step(action)
            actions.append(action)
            observations.append(observation)
            rewards.append(reward)
        return first, actions, observations, self.won, rewards

    def close(self) -> None:
        self.scene = None


class HouseholdTask:
    """Generated household games with the expert's episodes as SFT data (see the module docstring)."""

    name = "household"
    kind = "agent"
    reward_range = (0.0, 1.0)

    def __init__(self, cfg: HouseholdConfig | None = None):
        self.cfg = cfg or HouseholdConfig()
        self.max_steps = self.cfg.max_steps
        self.chat = self.cfg.chat
        base = self.cfg.seed * 1_000_003
        sizes = {"train": self.cfg.n_train, "test": self.cfg.n_test}
        self.splits = {}
        offset = 0
        for split in SPLITS:
            self.splits[split] = [self._game(split, base + offset + i) for i in range(sizes[split])]
            offset += sizes[split]

    def _game(self, split: str, seed: int) -> Game:
        return Game(id=f"{split}-{seed}", split=split, kind=generate_scene(seed, self.cfg).kind, spec=seed)

    def games(self, split: str) -> list[Game]:
        if split not in self.splits:
            raise KeyError(f"household: unknown split {split!r}; expected one of {SPLITS}")
        return self.splits[split]

    problems = games

    def make_env(self) -> HouseholdEnv:
        return HouseholdEnv(self.cfg)

    def prompt(self, game: Game, first_observation: str):
        return format_prompt(INSTRUCTION, first_observation, chat=self.chat)

    def sft_records(self, rng_seed: int, n_per_problem: int = 1) -> list[Trajectory]:
        """The imperfect expert's episodes on the train games (reward: whether it won)."""
        rng, env, records = random.Random(rng_seed), self.make_env(), []
        for game in self.games("train"):
            for k in range(n_per_problem):
                first, actions, observations, won, rewards = env.teacher_episode(game, rng)
                records.append(episode_record(self, game, f"expert-{game.id}-{k}", self.prompt(game, first),
                                              *expert_turns(actions, observations), rewards, won=won,
                                              meta={"source": "expert"}))
        return records


def vocabulary() -> list[str]:
    """Every word the games, the expert and the prompt use (for the tiny model's word tokenizer)."""
    texts = [INSTRUCTION, "Thought Action Observation OK room", " ".join(KINDS), " ".join(ROOMS)]
    texts += [" ".join(v) for v in ROOMS.values()] + [" ".join(v) for v in OBJECTS.values()]
    texts += [" ".join(OPENABLE), " ".join(STATE.values()), " ".join(LAMP_PLACES), "desklamp"]
    texts += [
        "You are in the middle of a . Looking quickly around you, you see and nothing .\nYour task is to: put a in",
        "look at under the desklamp", "You are facing the", "You are carrying: a You are not carrying anything",
        "go to You arrive at On the The is closed open close You open the In it You close the take from",
        "You pick up the put in/on You put the clean heat cool with You clean You heat You cool using the",
        "use You turn on the Nothing happened",
    ]
    return sorted({w for t in texts for w in re.findall(r"[A-Za-z]+", t)})
