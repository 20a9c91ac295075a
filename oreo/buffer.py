"""The offline buffer: trajectory records on disk, one folder per collection round.

Layout::

    buffer/
      round_000/      # written with ``Dataset.save_to_disk``
      round_001/
      .tmp_round_002_<hex>/   # a round being written; renamed when complete

A round is written into a temporary folder and renamed into place, so a kill never leaves a
half-written round; leftover temporary folders are ignored and removed when a ``Buffer`` is opened.
One writer per buffer at a time is assumed.

A record is a ``Trajectory`` (``oreo.trajectory``), one row per record, one column per field.
Arrow needs fixed column types, so ``prompt`` (text or chat messages) and ``meta`` (arbitrary JSON)
are stored as JSON strings and decoded on load. A round written before the per-step and tree columns
existed (``FEATURES_V1``) loads with those fields empty.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

import datasets
from datasets import Dataset, Features, List, Value

from oreo.atomic_write import atomic_file
from oreo.trajectory import FIELDS, RecordError, Trajectory  # noqa: F401 (FIELDS, RecordError: re-exported)

__all__ = ["Buffer", "FEATURES", "RecordError", "Trajectory", "import_jsonl", "import_reference_jsonl", "json_lines"]

# The columns of a round written before trajectories carried per-step rewards and values and tree
# identity; such a round still loads, with those fields empty.
FEATURES_V1 = Features({
    "id": Value("string"),
    "round": Value("int64"),
    "task": Value("string"),
    "problem_id": Value("string"),
    "prompt": Value("string"),  # JSON: a string or a list of {role, content}
    "steps": List(Value("string")),
    "observations": List(Value("string")),
    "reward": Value("float64"),
    "correct": Value("bool"),
    "answer": Value("string"),
    "meta": Value("string"),  # JSON object
})
ADDED_FEATURES = Features({  # added after FEATURES_V1, with the value an older round gets
    "step_rewards": List(Value("float64")),
    "step_values": List(Value("float64")),
    "tree_id": Value("string"),
    "node_ids": List(Value("string")),
    "parent_ids": List(Value("string")),
})
_ADDED_DEFAULTS = {"step_rewards": [], "step_values": [], "tree_id": None, "node_ids": [], "parent_ids": []}
FEATURES = Features({**FEATURES_V1, **ADDED_FEATURES})

_ROUND_DIR = re.compile(r"round_(\d+)")
_TMP_PREFIX = ".tmp_round_"


def _encode(record: Trajectory) -> dict:
    """Trajectory -> on-disk row (JSON columns as strings), columns in ``FEATURES`` order."""
    row = {**record.to_dict(), "prompt": json.dumps(record.prompt, ensure_ascii=False),
           "meta": json.dumps(record.meta, ensure_ascii=False)}
    return {name: row[name] for name in FEATURES}


def _decode(row: dict, where: str = "") -> Trajectory:
    """On-disk row -> Trajectory."""
    return Trajectory.from_dict({**row, "prompt": json.loads(row["prompt"]), "meta": json.loads(row["meta"])}, where)


class Buffer:
    """Trajectory records on disk under ``path``, one ``datasets`` folder per round."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            for leftover in self.path.glob(_TMP_PREFIX + "*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def __repr__(self) -> str:
        return f"Buffer({str(self.path)!r}, rounds={self.rounds()})"

    def _round_dir(self, round: int) -> Path:
        return self.path / f"round_{round:03d}"

    def rounds(self) -> list[int]:
        """Round numbers present on disk, ascending."""
        if not self.path.is_dir():
            return []
        found = (_ROUND_DIR.fullmatch(p.name) for p in self.path.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def next_round(self) -> int:
        """The number the next appended round gets by default."""
        present = self.rounds()
        return present[-1] + 1 if present else 0

    def _select(self, rounds: Iterable[int] | None) -> list[int]:
        present = self.rounds()
        if rounds is None:
            return present
        wanted = sorted(set(rounds))
        missing = [r for r in wanted if r not in present]
        if missing:
            raise KeyError(f"{self.path}: no round(s) {missing}; present: {present}")
        return wanted

    def _open(self, round: int) -> Dataset:
        folder = self._round_dir(round)
        try:
            ds = datasets.load_from_disk(str(folder))
            ds[:1]  # reads the data, not only the metadata: a cut file fails here
        except Exception as e:  # any damage reads the same to the user: the round cannot be loaded
            raise RuntimeError(f"{folder}: damaged, cannot be loaded ({type(e).__name__}: {e}); delete that folder "
                               f"to collect round {round} again (in a run: recompute=[collect])") from None
        if ds.features == FEATURES_V1:  # an older round: the added columns, empty (in memory only)
            for name, feature in ADDED_FEATURES.items():
                ds = ds.add_column(name, [_ADDED_DEFAULTS[name]] * ds.num_rows, feature=feature)
        if ds.features != FEATURES:
            raise ValueError(f"{self._round_dir(round)}: unexpected schema {ds.features}")
        return ds

    def append(self, records: Iterable[Trajectory | dict], round: int | None = None) -> int:
        """Write ``records`` as a new round; return its number. Plain dicts are validated into
        trajectories (``Trajectory.from_dict``).

        ``round=None`` takes the next number after the last round. Each stored record gets
        ``round`` set. Refuses an existing round, an empty round, and ids already in the buffer.
        """
        present = self.rounds()
        if round is None:
            round = self.next_round()
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ValueError(f"round must be a non-negative int, got {round!r}")
        if round in present:
            raise FileExistsError(f"{self._round_dir(round)} already exists; rounds are immutable")

        seen = set()
        for r in present:
            seen.update(self._open(r)["id"])
        rows = []
        for i, record in enumerate(records):
            where = f"{self.path} round {round}, record {i}"
            record = Trajectory.from_dict(record, where)
            if record.id in seen:
                raise RecordError(f"duplicate id {record.id!r}", where, "id")
            seen.add(record.id)
            rows.append(_encode(dataclasses.replace(record, round=round)))
        if not rows:
            raise ValueError(f"{self.path} round {round}: no records to append")

        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f"{_TMP_PREFIX}{round:03d}_{uuid.uuid4().hex}"
        try:
            Dataset.from_list(rows, features=FEATURES).save_to_disk(str(tmp))
            try:
                os.rename(tmp, self._round_dir(round))
            except OSError as e:  # another writer made this round meanwhile
                raise FileExistsError(f"{self._round_dir(round)} already exists") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return round

    def dataset(self, rounds: Iterable[int] | None = None) -> Dataset:
        """The raw rows of ``rounds`` (all by default) as one dataset; JSON columns as stored."""
        parts = [self._open(r) for r in self._select(rounds)]
        if not parts:
            return Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)

    def load(self, rounds: Iterable[int] | None = None) -> list[Trajectory]:
        """Records of ``rounds`` (all by default), in round order then insertion order."""
        return [_decode(row, f"{self.path} round {row['round']}") for row in self.dataset(rounds).to_list()]

    def __len__(self) -> int:
        return sum(self._open(r).num_rows for r in self.rounds())

    def filter(self, predicate: Callable[[Trajectory], bool],
               rounds: Iterable[int] | None = None) -> list[Trajectory]:
        """Records of ``rounds`` for which ``predicate(record)`` is true."""
        return [r for r in self.load(rounds) if predicate(r)]

    def stats(self, rounds: Iterable[int] | None = None) -> dict:
        """Summary numbers; means and fractions are None for an empty selection.

        Problems are keyed by ``(task, problem_id)``. A problem is "mixed" when it has both
        correct and incorrect records (the ones that carry a learning signal for offline RL).
        A record without ``meta["finished"]`` counts as finished.
        """
        records = self.load(rounds)
        n = len(records)
        per_round: dict[int, int] = defaultdict(int)
        outcomes: dict[tuple[str, str], set[bool]] = defaultdict(set)
        for r in records:
            per_round[r.round] += 1
            outcomes[(r.task, r.problem_id)].add(r.correct)

        def mean(values: list) -> float | None:
            return sum(values) / len(values) if values else None

        return {
            "n": n,
            "n_per_round": dict(per_round),
            "mean_reward": mean([r.reward for r in records]),
            "frac_correct": mean([r.correct for r in records]),
            "mean_steps": mean([len(r.steps) for r in records]),
            "mean_response_chars": mean([sum(map(len, r.steps)) for r in records]),
            "n_problems": len(outcomes),
            "frac_problems_any_correct": mean([True in o for o in outcomes.values()]),
            "frac_problems_mixed": mean([len(o) == 2 for o in outcomes.values()]),
            "frac_finished": mean([r.meta.get("finished", True) for r in records]),
        }

    def export_jsonl(self, path: str | Path, rounds: Iterable[int] | None = None) -> int:
        """Write records of ``rounds`` to ``path``, one JSON object per line; return the count."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        records = self.load(rounds)
        with atomic_file(path, path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
        return len(records)


def import_jsonl(path: str | Path) -> list[Trajectory]:
    """Read trajectories from a JSON-lines file (blank lines are skipped), as ``export_jsonl`` writes
    them; lines without the newer fields (per-step values, tree ids) read too.

    A malformed line raises ``RecordError`` naming the file, the 1-based line number and the field.
    Ids must be unique within the file. ``round`` is kept if present; ``Buffer.append`` resets it.
    """
    records, seen = [], set()
    for where, _, obj in json_lines(path, allow_empty=True):
        record = Trajectory.from_dict(obj, where)
        if record.id in seen:
            raise RecordError(f"duplicate id {record.id!r}", where, "id")
        seen.add(record.id)
        records.append(record)
    return records


def json_lines(path: str | Path, allow_empty: bool = False):
    """``(where, line number, object)`` for every non-blank line. Bytes that are not UTF-8, bad JSON, a
    line that is not a JSON object and (unless ``allow_empty``) a file without any line raise
    ``RecordError`` naming the file and the line."""
    found = False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(f"not UTF-8 text ({e.reason} at byte {e.start})", where) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"invalid JSON: {e}", where) from None
            if not isinstance(obj, dict):
                raise RecordError(f"expected a JSON object, got {type(obj).__name__}", where)
            found = True
            yield where, lineno, obj
    if not found and not allow_empty:
        raise RecordError("no records: the file is empty", str(path))


# Imported data whose share of suspicious lines (a reward outside the task's range, an empty response,
# a duplicate of an earlier line) exceeds this is refused: it is more likely a wrong file than noise.
MAX_SUSPICIOUS_SHARE = 0.5


def import_reference_jsonl(path: str | Path, split_steps: Callable[[str], list[str]], *, task: str = "",
                           id_prefix: str = "", reward_range: tuple[float, float] = (0.0, 1.0),
                           accept_out_of_range: bool = False) -> tuple[list[Trajectory], dict]:
    """Records from the reference implementation's math data: JSON lines ``{"prompt", "response",
    "reward"}`` (the prompt fully formatted, chat template included; lines of one prompt contiguous),
    as the authors released theirs, and a report of what was odd about them. Responses are split into
    steps with ``split_steps``; a prompt's lines share one ``problem_id``; other fields of a line are kept
    in ``meta["extra"]``. Ids are ``{id_prefix}ref-line{N}`` (a prefix per buffer round keeps them unique
    when one file is imported in several rounds).

    A bad line raises ``RecordError`` naming the file, line and field. So does an empty prompt (there is
    nothing to condition on), and a reward outside ``reward_range`` (the task's: one such reward can swamp
    every other in OREO's value loss) unless ``accept_out_of_range``; then those lines are imported and
    listed in the report. Empty responses and duplicate lines are counted and reported, and the file is
    refused when they are more than ``MAX_SUSPICIOUS_SHARE`` of its lines. The report maps each oddity
    found to its line numbers, plus ``"lines"``: the number imported.
    """
    records, problem_ids, seen = [], {}, set()
    low, high = reward_range
    outside = "reward outside the task's range"
    odd = {"empty prompt": [], outside: [], "empty response": [], "duplicate line": []}
    for where, lineno, obj in json_lines(path):
        for key, kind in (("prompt", str), ("response", str), ("reward", (int, float))):
            if key not in obj:
                raise RecordError("missing field", where, key)
            if not isinstance(obj[key], kind) or isinstance(obj[key], bool) and key == "reward":
                raise RecordError(f"expected {getattr(kind, '__name__', 'a number')}, got "
                                  f"{type(obj[key]).__name__}", where, key)
        if not math.isfinite(obj["reward"]):
            raise RecordError(f"not a finite number: {obj['reward']}", where, "reward")
        for problem, hit in (("empty prompt", not obj["prompt"].strip()),
                             (outside, not low <= obj["reward"] <= high),
                             ("empty response", not obj["response"].strip()),
                             ("duplicate line", (obj["prompt"], obj["response"], obj["reward"]) in seen)):
            if hit:
                odd[problem].append(lineno)
        seen.add((obj["prompt"], obj["response"], obj["reward"]))
        problem_id = problem_ids.setdefault(obj["prompt"], f"ref-{len(problem_ids):06d}")
        extra = {k: v for k, v in obj.items() if k not in ("prompt", "response", "reward")}
        record = {"id": f"{id_prefix}ref-line{lineno}", "task": task, "problem_id": problem_id, "prompt": obj["prompt"],
                  "steps": split_steps(obj["response"]), "observations": [], "reward": float(obj["reward"]),
                  "correct": obj["reward"] > 0, "answer": None,
                  "meta": {"source": str(path), "line": lineno, "finished": True}}
        if extra:
            record["meta"]["extra"] = extra
        records.append(Trajectory.from_dict(record, where))

    def lines(numbers: list[int]) -> str:
        more = ", ..." if len(numbers) > 5 else ""
        return f"line{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers[:5]))}{more}"

    n = len(records)
    if odd["empty prompt"]:
        empty = odd["empty prompt"]
        raise RecordError(f"empty on {len(empty)} of {n} lines ({lines(empty)}): a response to nothing cannot be "
                          f"trained on; remove those lines", f"{path}:{empty[0]}", "prompt")
    if odd[outside] and not accept_out_of_range:
        raise RecordError(f"outside the task's range [{low:g}, {high:g}] on {len(odd[outside])} of {n} lines "
                          f"({lines(odd[outside])}); rescale the rewards, or set collect.accept_out_of_range_rewards="
                          f"true to import them as they are (they are then listed in run.json)",
                          f"{path}:{odd[outside][0]}", "reward")
    report = {problem: numbers for problem, numbers in odd.items() if numbers}
    if report:
        listed = "; ".join(f"{len(numbers)} with {problem} ({lines(numbers)})" for problem, numbers in report.items())
        bad = len({k for problem, numbers in report.items() if problem != outside for k in numbers})
        if bad > MAX_SUSPICIOUS_SHARE * n:
            raise RecordError(f"{bad} of {n} lines are suspicious ({listed}), more than "
                              f"{MAX_SUSPICIOUS_SHARE:.0%}: is this the right file?", str(path))
        print(f"{path}: {n} lines; {listed}", flush=True)
    return records, {"lines": n, **report}
