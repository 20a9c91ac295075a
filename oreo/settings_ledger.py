"""The run's ledger of what shaped each stage (``oreo.stages``), kept in its record's "settings".

A stage claims its settings before it runs or its output is reused; a rerun whose settings differ for a stage that
has outputs refuses (``StageSettingsChanged``), and ``recompute=[...]`` removes the outputs of the stages it names
and of those that depend on them, with their entries in the record.
"""
from __future__ import annotations

from collections.abc import Callable

from oreo.buffer import Buffer
from oreo.checkpoint import progress_dir
from oreo.config import ConfigError
from oreo.run_dir import RunDir
from oreo.run_record import RunRecord
from oreo.stages import StageId, StageSettingsChanged, dependents, differences, recorded_settings


class SettingsLedger:
    """The settings of the stages of the run in ``files``, recorded in ``record`` from the resolved config
    ``config``; ``save()`` writes the record when a claim changes it."""

    def __init__(self, files: RunDir, record: RunRecord, config: dict, save: Callable[[], None]):
        self.files, self.record, self.config, self.save = files, record, config, save

    def started(self, stage: StageId) -> bool:
        """Whether ``stage`` has outputs in the run directory, whole or partial."""
        if stage.kind == "collect":
            return self.files.buffer_round(stage.round).exists() or bool(self.files.buffer_round_partials(stage.round))
        if stage.kind == "evaluate":
            return bool(self.record.accuracy) or bool(self.files.eval_partials())
        out = self.files.checkpoint(stage.name)
        return out.exists() or progress_dir(out).exists()

    def check(self, skip: set[str] = frozenset()) -> None:
        """Every started stage (but those named in ``skip``) must have been run with this config's settings and
        seed offset (else ``StageSettingsChanged``)."""
        for name, recorded in (self.record.settings or {}).items():
            if name in skip:
                continue
            stage = StageId.parse(name)
            changes = differences(recorded, recorded_settings(self.config, stage))
            if changes and self.started(stage):
                raise StageSettingsChanged(stage, changes, self.files.path)

    def claim(self, stage: StageId) -> None:
        """Before ``stage`` runs or its output is reused: record the settings that shape it and its seed offset."""
        now = recorded_settings(self.config, stage)
        recorded = self.record.settings_of(stage.name)
        changes = differences(recorded, now) if recorded is not None else []
        if changes and self.started(stage):
            raise StageSettingsChanged(stage, changes, self.files.path)
        if recorded != now:
            self.record.record_settings(stage.name, now)
            self.save()

    def present(self) -> list[str]:
        """The stages with settings recorded or outputs in the run directory."""
        found = set(self.record.settings or {})
        found |= {StageId("collect", r).name for r in Buffer(self.files.buffer).rounds()}
        return sorted(found | self.files.checkpoint_names())

    def to_recompute(self, names: list[str]) -> set[str]:
        """The stages ``recompute=names`` redoes: those named and every stage that depends on them."""
        present = self.present()
        kinds = {StageId.parse(s).kind for s in present}
        for name in map(str, names):
            if name not in present and not (name and StageId.parse(name).is_kind and name in kinds):
                raise ConfigError("recompute", f"{name!r} is not a stage of {self.files.path}; its stages: {present}")
        return {s for name in names for s in dependents(str(name), present)}

    def forget(self, name: str) -> None:
        """Remove stage ``name``'s outputs and its entries in the record (an evaluation: every method's)."""
        record, stage = self.record, StageId.parse(name)
        for section in ("settings", "stages", "skipped"):
            record.forget(section, name)
        methods = list(record.accuracy or {}) if stage.kind == "evaluate" else [name]
        if stage.kind == "collect":
            self.files.remove_buffer_round(stage.round)
            if stage.round == 0:
                record.forget("buffer")
            return
        if stage.kind != "evaluate":
            self.files.remove_checkpoint(name)
        for method in methods:
            for section in ("accuracy", "sampled", "episodes"):
                record.forget(section, method)
            self.files.remove_evaluations(method)
