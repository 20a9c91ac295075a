"""The offline buffer: trajectory records on disk, one folder per collection round.

Layout::

    buffer/
      round_000/      # written with ``Dataset.save_to_disk``
      round_001/
      .tmp_round_002_<hex>/   # a round being written; renamed when complete

A round is written into a temporary folder and renamed into place, so a kill never leaves a
half-written round; leftover temporary folders are ignored and removed when a ``Buffer`` is opened.
One writer per buffer at a time is assumed.

A record is a plain dict (see ``validate_record``). Arrow needs fixed column types, so
``prompt`` (text or chat messages) and ``meta`` (arbitrary JSON) are stored as JSON strings
and decoded on load.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections import defaultdict
from numbers import Real
from pathlib import Path
from typing import Any, Callable, Iterable

import datasets
from datasets import Dataset, Features, List, Value

REQUIRED_FIELDS = ("id", "task", "problem_id", "prompt", "steps", "reward")
FIELDS = ("id", "round", "task", "problem_id", "prompt", "steps", "observations",
          "reward", "correct", "answer", "meta")

FEATURES = Features({
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

_ROUND_DIR = re.compile(r"round_(\d+)")
_TMP_PREFIX = ".tmp_round_"


class RecordError(ValueError):
    """A record is malformed. The message names where it came from, the record and the field."""

    def __init__(self, message: str, where: str = "", field: str | None = None):
        self.where, self.field = where, field
        parts = [where] if where else []
        if field is not None:
            parts.append(f"field '{field}'")
        super().__init__(": ".join(parts + [message]))


def _is_str_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _check_prompt(prompt: Any) -> str | None:
    """Return a problem description, or None if ``prompt`` is valid text or chat messages."""
    if isinstance(prompt, str):
        return None
    if not isinstance(prompt, list) or not prompt:
        return f"expected a str or a non-empty list of messages, got {type(prompt).__name__}"
    for i, message in enumerate(prompt):
        if not isinstance(message, dict):
            return f"message {i}: expected a dict, got {type(message).__name__}"
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                return f"message {i}: '{key}' must be a str"
    return None


def validate_record(record: dict, where: str = "") -> dict:
    """Check one record and return a normalised copy (the input is not modified).

    Defaults: ``observations=[]``, ``meta={}``, ``answer=None``, ``correct=reward > 0``,
    ``round=None`` (``Buffer.append`` sets it). Raises ``RecordError`` naming ``where``, the
    record's id when known, the field and the problem. Unknown top-level fields are refused,
    since the on-disk schema would drop them: put extra data in ``meta``.
    """
    if not isinstance(record, dict):
        raise RecordError(f"expected a dict, got {type(record).__name__}", where)
    if isinstance(record.get("id"), str):
        where = f"{where} (id {record['id']!r})" if where else f"id {record['id']!r}"

    def fail(field: str, problem: str):
        raise RecordError(problem, where, field)

    for field in REQUIRED_FIELDS:
        if field not in record:
            fail(field, "missing required field")
    for field in record:
        if field not in FIELDS:
            fail(field, "unknown field (put extra data in 'meta')")

    out = {f: record.get(f) for f in FIELDS}
    for field in ("id", "task", "problem_id"):
        if not isinstance(out[field], str):
            fail(field, f"expected a str, got {type(out[field]).__name__}")
    if not out["id"]:
        fail("id", "must not be empty")

    rnd = out["round"]
    if rnd is not None and (isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0):
        fail("round", f"expected a non-negative int, got {rnd!r}")

    problem = _check_prompt(out["prompt"])
    if problem:
        fail("prompt", problem)
    if not isinstance(out["prompt"], str):
        out["prompt"] = [dict(m) for m in out["prompt"]]
        try:
            json.dumps(out["prompt"], allow_nan=False)
        except (TypeError, ValueError) as e:
            fail("prompt", f"not JSON-serialisable: {e}")

    if not _is_str_list(out["steps"]):
        fail("steps", "expected a list of str")
    out["steps"] = list(out["steps"])

    obs = [] if out["observations"] is None else out["observations"]
    if not _is_str_list(obs):
        fail("observations", "expected a list of str")
    n_steps = len(out["steps"])
    # One observation after each turn, except possibly after the last; none for single-turn.
    if obs and not n_steps - 1 <= len(obs) <= n_steps:
        fail("observations", f"{len(obs)} observations for {n_steps} steps "
                             f"(expected 0, {n_steps - 1} or {n_steps})")
    out["observations"] = list(obs)

    reward = out["reward"]
    if isinstance(reward, bool) or not isinstance(reward, Real):
        fail("reward", f"expected a number, got {type(reward).__name__}")
    if not math.isfinite(reward):
        fail("reward", f"must be finite, got {reward!r}")
    out["reward"] = float(reward)

    if out["correct"] is None:
        out["correct"] = out["reward"] > 0
    elif not isinstance(out["correct"], bool):
        fail("correct", f"expected a bool, got {type(out['correct']).__name__}")

    if out["answer"] is not None and not isinstance(out["answer"], str):
        fail("answer", f"expected a str or None, got {type(out['answer']).__name__}")

    meta = {} if out["meta"] is None else out["meta"]
    if not isinstance(meta, dict):
        fail("meta", f"expected a dict, got {type(meta).__name__}")
    if not isinstance(meta.get("finished", True), bool):
        fail("meta", "'finished' must be a bool")
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        fail("meta", f"not JSON-serialisable: {e}")
    out["meta"] = dict(meta)
    return out


def _encode(record: dict) -> dict:
    """Validated record -> on-disk row (JSON columns as strings)."""
    return {**record,
            "prompt": json.dumps(record["prompt"], ensure_ascii=False),
            "meta": json.dumps(record["meta"], ensure_ascii=False)}


def _decode(row: dict) -> dict:
    """On-disk row -> record."""
    return {**row, "prompt": json.loads(row["prompt"]), "meta": json.loads(row["meta"])}


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
        ds = datasets.load_from_disk(str(self._round_dir(round)))
        if ds.features != FEATURES:
            raise ValueError(f"{self._round_dir(round)}: unexpected schema {ds.features}")
        return ds

    def append(self, records: Iterable[dict], round: int | None = None) -> int:
        """Validate ``records`` and write them as a new round; return its number.

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
            record = validate_record(record, where)
            if record["id"] in seen:
                raise RecordError(f"duplicate id {record['id']!r}", where, "id")
            seen.add(record["id"])
            rows.append(_encode({**record, "round": round}))
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

    def load(self, rounds: Iterable[int] | None = None) -> list[dict]:
        """Records of ``rounds`` (all by default), in round order then insertion order."""
        return [_decode(row) for row in self.dataset(rounds).to_list()]

    def __len__(self) -> int:
        return sum(self._open(r).num_rows for r in self.rounds())

    def filter(self, predicate: Callable[[dict], bool],
               rounds: Iterable[int] | None = None) -> list[dict]:
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
            per_round[r["round"]] += 1
            outcomes[(r["task"], r["problem_id"])].add(r["correct"])

        def mean(values: list) -> float | None:
            return sum(values) / len(values) if values else None

        return {
            "n": n,
            "n_per_round": dict(per_round),
            "mean_reward": mean([r["reward"] for r in records]),
            "frac_correct": mean([r["correct"] for r in records]),
            "mean_steps": mean([len(r["steps"]) for r in records]),
            "mean_response_chars": mean([sum(map(len, r["steps"])) for r in records]),
            "n_problems": len(outcomes),
            "frac_problems_any_correct": mean([True in o for o in outcomes.values()]),
            "frac_problems_mixed": mean([len(o) == 2 for o in outcomes.values()]),
            "frac_finished": mean([r["meta"].get("finished", True) for r in records]),
        }

    def export_jsonl(self, path: str | Path, rounds: Iterable[int] | None = None) -> int:
        """Write records of ``rounds`` to ``path``, one JSON object per line; return the count."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        records = self.load(rounds)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return len(records)


def import_jsonl(path: str | Path) -> list[dict]:
    """Read and validate records from a JSON-lines file (blank lines are skipped).

    A malformed line raises ``RecordError`` naming the file, the 1-based line number and the field.
    Ids must be unique within the file. ``round`` is kept if present; ``Buffer.append`` resets it.
    """
    records, seen = [], set()
    for where, _, obj in json_lines(path):
        record = validate_record(obj, where)
        if record["id"] in seen:
            raise RecordError(f"duplicate id {record['id']!r}", where, "id")
        seen.add(record["id"])
        records.append(record)
    return records


def json_lines(path: str | Path):
    """``(where, line number, object)`` for every non-blank line; bad JSON raises ``RecordError``."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"invalid JSON: {e}", where) from None


def import_reference_jsonl(path: str | Path, split_steps: Callable[[str], list[str]], *, task: str = "") -> list[dict]:
    """Records from the reference implementation's math data: JSON lines ``{"prompt", "response",
    "reward"}`` (the prompt fully formatted, chat template included; lines of one prompt contiguous),
    as the authors released theirs. Responses are split into steps with ``split_steps``; a prompt's
    lines share one ``problem_id``. A bad line raises ``RecordError`` naming the file, line and field.
    """
    records, problem_ids = [], {}
    for where, lineno, obj in json_lines(path):
        for key, kind in (("prompt", str), ("response", str), ("reward", (int, float))):
            if key not in obj:
                raise RecordError("missing field", where, key)
            if not isinstance(obj[key], kind) or isinstance(obj[key], bool) and key == "reward":
                raise RecordError(f"expected {getattr(kind, '__name__', 'a number')}, got "
                                  f"{type(obj[key]).__name__}", where, key)
        problem_id = problem_ids.setdefault(obj["prompt"], f"ref-{len(problem_ids):06d}")
        record = {"id": f"ref-line{lineno}", "task": task, "problem_id": problem_id, "prompt": obj["prompt"],
                  "steps": split_steps(obj["response"]), "observations": [], "reward": float(obj["reward"]),
                  "correct": obj["reward"] > 0, "answer": None,
                  "meta": {"source": str(path), "line": lineno, "finished": True}}
        records.append(validate_record(record, where))
    return records
