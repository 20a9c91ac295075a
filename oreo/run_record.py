"""What ``run.json`` holds, read and written through one type: ``RunRecord``.

``run.json`` is a run's record: the settings that shaped each stage, what each stage reported, why a stage was
skipped, the evaluations and, for the multi-round drivers, their per-round table. Its ``accuracy`` section is also
written alone as ``metrics.json``. The file is versioned (``version``); a file without one was written before the
key existed and is version 1, the same sections. Top-level keys this oreo does not know (written by a newer oreo or
another tool) are kept as they are and written back.

Several processes may write one ``run.json`` (a stale one, after another finished a stage): a write merges what the
file holds into the record instead of replacing it (``merge``), so a finished stage's entry is never dropped, but an
entry this process removed on purpose (``RunRecord.forget``, for ``recompute``) stays removed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

VERSION = 1   # the run.json format this oreo writes; a file without "version" is version 1

# the sections in the order run.json lists them; each is absent from the file until something is recorded in it
SECTIONS = ("settings", "stages", "skipped", "accuracy", "sampled", "episodes", "buffer", "rounds")


class RunRecordError(RuntimeError):
    """``run.json`` cannot be read: damaged, or written by a newer oreo in a format this one does not know."""


@dataclass
class RunRecord:
    """One run's ``run.json``. A section that is None is absent from the file (nothing recorded in it yet); an
    empty one is written as such.

    - ``settings``: stage name → the config keys that shaped it and its seed offset (``oreo.stages``)
    - ``stages``: stage name → what the stage reported (training, collection or import statistics)
    - ``skipped``: stage name → why a trained stage was skipped (less than one batch of data)
    - ``accuracy``: method → split → greedy accuracy (agents: success rate); ``metrics.json`` is this alone
    - ``sampled``: method → split → pass@k and maj@k
    - ``episodes``: method → split → an agent's greedy evaluation (turns, tokens, success per goal kind)
    - ``buffer``: the first collection round's statistics
    - ``rounds``: a multi-round driver's per-round table (``oreo.iterate.report_rounds``)
    - ``extra``: top-level keys this oreo does not know, kept as read
    """
    settings: dict[str, dict] | None = None
    stages: dict[str, dict] | None = None
    skipped: dict[str, str] | None = None
    accuracy: dict[str, dict[str, float]] | None = None
    sampled: dict[str, dict[str, dict]] | None = None
    episodes: dict[str, dict[str, dict]] | None = None
    buffer: dict | None = None
    rounds: list[dict] | None = None
    extra: dict = field(default_factory=dict)
    version: int = VERSION
    # (section, entry) pairs this process removed on purpose, which a merge must not bring back ((section, None):
    # the whole section); not part of the file
    forgotten: set[tuple[str, str | None]] = field(default_factory=set, repr=False, compare=False)

    # ------------------------------------------------------------------ the file
    @classmethod
    def from_dict(cls, data: dict, source: str | Path = "run.json") -> RunRecord:
        """The record ``data`` (run.json's content) holds; ``source`` names the file in errors."""
        if not isinstance(data, dict):
            raise RunRecordError(_damaged(source, f"a JSON {type(data).__name__}, not an object"))
        version = data.get("version", 1)
        if not isinstance(version, int) or version > VERSION:
            raise RunRecordError(f"{source}: run record version {version!r}, written by a newer oreo; this one reads "
                                 f"versions up to {VERSION}: use that oreo, or a new run_dir")
        for name in SECTIONS:
            expected = list if name == "rounds" else dict
            if name in data and not isinstance(data[name], expected):
                raise RunRecordError(_damaged(source, f"its {name!r} is not a JSON {expected.__name__}"))
        extra = {k: v for k, v in data.items() if k not in SECTIONS and k != "version"}
        return cls(**{name: data[name] for name in SECTIONS if name in data}, extra=extra)

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        """The record in ``path`` (today's files and those written before run.json had a version)."""
        try:
            data = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunRecordError(_damaged(path, e)) from None
        return cls.from_dict(data, source=path)

    def to_dict(self) -> dict:
        """run.json's content: the version, the sections recorded (``SECTIONS``' order), then the unknown keys."""
        sections = {name: getattr(self, name) for name in SECTIONS if getattr(self, name) is not None}
        return {"version": self.version, **sections, **self.extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def metrics_json(self) -> str:
        """``metrics.json``'s content: method → split → accuracy."""
        return json.dumps(self.accuracy or {}, indent=2)

    def absorb(self, on_disk: dict) -> None:
        """Take in what ``on_disk`` (the file's content now) holds that this record lacks (``merge``), keeping the
        deliberate removals; the record object stays the same, so whoever holds it sees the merge."""
        merged = RunRecord.from_dict({k: v for k, v in merge(on_disk, self.to_dict(), self.forgotten).items()
                                      if k != "version"})
        for name in (*SECTIONS, "extra"):
            setattr(self, name, getattr(merged, name))

    # ------------------------------------------------------------------ recording
    def settings_of(self, stage: str) -> dict | None:
        """The settings recorded for stage ``stage`` (None: none yet)."""
        return (self.settings or {}).get(stage)

    def record_settings(self, stage: str, settings: dict) -> None:
        self._section("settings")[stage] = settings

    def record_stage(self, stage: str, info: dict) -> None:
        """What stage ``stage`` reported."""
        self._section("stages")[stage] = info

    def record_skipped(self, stage: str, reason: str) -> None:
        self._section("skipped")[stage] = reason

    def record_accuracy(self, method: str, per_split: dict[str, float]) -> None:
        self._section("accuracy")[method] = per_split

    def record_sampled(self, method: str, split: str, result: dict) -> None:
        self._section("sampled").setdefault(method, {})[split] = result

    def record_episodes(self, method: str, split: str, result: dict) -> None:
        self._section("episodes").setdefault(method, {})[split] = result

    def _section(self, name: str) -> dict:
        if getattr(self, name) is None:
            setattr(self, name, {})
        return getattr(self, name)

    def forget(self, section: str, entry: str | None = None) -> None:
        """Remove ``entry`` from ``section`` (None: the whole section) on purpose: a later merge with the file does
        not bring it back."""
        if entry is None:
            setattr(self, section, None)
        elif getattr(self, section) is not None:
            getattr(self, section).pop(entry, None)
        self.forgotten.add((section, entry))


def _damaged(path, why) -> str:
    return (f"{path}: damaged, cannot be read ({why}); delete it to measure the evaluations again (finished stages, "
            f"their checkpoints and the buffer are kept)")


def merge(on_disk: dict, mine: dict, forgotten: set) -> dict:
    """``run.json`` as ``mine`` says, keeping every entry of ``on_disk`` that ``mine`` lacks: top-level
    sections that are dicts (stage → record, method → split → accuracy) merge entry by entry, ``mine`` winning
    where both have one; ``forgotten`` lists ``(section, entry)`` pairs removed on purpose (``(section,
    None)``: the whole section)."""
    merged = dict(on_disk)
    for key, value in mine.items():
        old = on_disk.get(key)
        merged[key] = {**old, **value} if isinstance(value, dict) and isinstance(old, dict) else value
    for key, entry in forgotten:
        if entry is None:
            if key not in mine:
                merged.pop(key, None)
        elif isinstance(merged.get(key), dict) and entry not in mine.get(key, {}):
            merged[key].pop(entry, None)
    return merged

