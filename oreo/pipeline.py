"""The stages of a run — SFT, collect, RFT, OREO — and the evaluation after each, from one config.

Every stage writes its output into the run directory and is skipped when that output is already
there (``resume=true``), so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import fcntl
import json
import random
import shutil
from pathlib import Path

import torch

from oreo.atomic_write import write_atomically
from oreo.buffer import Buffer, import_reference_jsonl
from oreo.checkpoint import progress_dir, verify_manifest, weights_stamp
from oreo.config import ConfigError
from oreo.distributed import barrier, broadcast_from_rank0, init_distributed, rank_world
from oreo.encode import Encoder
from oreo.evaluate import evaluate_episodes, evaluate_greedy, evaluate_sampled
from oreo.lora import add_lora
from oreo.metrics import MetricsLogger
from oreo.models import ValueModel, enable_gradient_checkpointing
from oreo.partial_files import parses_json
from oreo.rollout.collector import collect
from oreo.rollout.episodes import sampled_actions
from oreo.rollout.selection import balanced_selection
from oreo.run_config import RunConfig, as_dict, check_inputs, to_yaml
from oreo.run_lock import RunDirLock, lock_run_dir
from oreo.runtime import (
    build_sampler,
    check_value_backbone,
    close_sampler,
    load_model,
    new_value_model,
    pick_device,
    quiet_library_progress_bars,
)
from oreo.search.mcts import collect_trees
from oreo.search.value import StepPrior, ValueScorer, load_value_model
from oreo.stages import (
    StageId,
    StageSettingsChanged,
    dependents,
    differences,
    kind_of,
    recorded_settings,
    seed_offset,
    stage_id,
)
from oreo.tasks import make_task
from oreo.trainers import METHODS
from oreo.trainers.common import NotEnoughData, TrainConfig
from oreo.trainers.reference import reference_name

# what `stages` may name, in the order they run: the SFT model is trained, the buffer collected, then
# each trained method starts from the SFT model on its data (oreo.trainers.METHODS) and is evaluated
STAGES = ("sft", "collect", "rft", "oreo", "dpo", "kto", "prm", "step_apo")


class Run:
    """One run directory: config, metrics, buffer, checkpoints."""

    def __init__(self, cfg: RunConfig):
        self.plain = as_dict(cfg)  # what run.json's stage settings are read from
        check_inputs(cfg)
        check_value_backbone(cfg)   # what would fail after hours of SFT fails now
        quiet_library_progress_bars()
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        # Under torchrun every rank runs this; rank 0 alone writes the run's files (run_dir must be
        # shared by all nodes), the others take their share of collection, evaluation and training.
        self.rank, self.world = init_distributed() if rank_world()[1] > 1 else (0, 1)
        self.main = self.rank == 0
        if not cfg.resume and any((self.dir / name).exists() for name in ("run.json", "checkpoints", "buffer")):
            raise FileExistsError(f"{self.dir} holds an earlier run, and resume=false would mix its outputs with "
                                  f"new ones: use a new run_dir, or delete {self.dir} first")
        self._forgotten: set[tuple[str, str | None]] = set()   # run.json entries recompute removed
        self.task = make_task(cfg.task)
        self.agent = self.task.kind == "agent"  # multi-turn episodes in an environment
        self.imported = self.import_file()   # bad data fails now, before any stage, whatever `stages` says
        self._lock = self._hold_directory()   # before run.json is read for this run, and anything written
        try:
            self._open(cfg)
        except BaseException:
            if self._lock is not None:   # a refused run lets go of the directory at once, not at exit
                self._lock.release()
            raise

    def _open(self, cfg: RunConfig) -> None:
        """Read the run record, apply ``recompute``, check the settings and set the run up (the directory held)."""
        self.results = self._read_results()
        redo = self.to_recompute(list(cfg.recompute))
        self.check_settings(skip=redo)  # before config.yaml says anything about this run
        if self.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stage in sorted(redo):
                self._forget(stage)
                print(f"recompute: removed the outputs of '{stage}'", flush=True)
            if redo:
                self._write_results()
            (self.dir / "config.yaml").write_text(to_yaml(cfg))
        barrier()
        if not self.main:
            self.results = self._read_results()  # as rank 0 left it after recompute
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device(cfg.device)
        self.buffer = Buffer(self.dir / "buffer")
        self.logger = MetricsLogger(self.dir, wandb_cfg=as_dict(cfg.wandb),
                                    config=self.plain, enabled=self.main)

    def _hold_directory(self) -> RunDirLock | None:
        """Rank 0 locks the run directory for the whole job (``oreo.run_lock``); the other ranks take its
        verdict, so when another run holds the directory every rank fails with the same error, none waits at a
        barrier for a rank that has failed."""
        lock, error = None, None
        if self.main:
            try:
                lock = lock_run_dir(self.dir)
            except Exception as e:
                error = e
        error = broadcast_from_rank0(error)
        if error is not None:
            raise error
        return lock

    def close(self) -> None:
        """The run is done: close the logger and let go of the run directory."""
        self.logger.close()
        if self._lock is not None:
            self._lock.release()

    # ------------------------------------------------------------------ helpers
    def checkpoint(self, name: str) -> Path:
        return self.dir / "checkpoints" / name

    def seed(self, offset: int = 0) -> None:
        seed = self.cfg.seed + offset
        random.seed(seed)
        torch.manual_seed(seed)

    def load(self, path_or_name: str | Path):
        return load_model(self.cfg, path_or_name, self.device)

    def train_config(self, stage: str) -> TrainConfig:
        return self.cfg.method(stage).train

    def training_records(self, rounds: list[int] | None = None) -> list[dict]:
        """The buffer's trajectories (of ``rounds``), after ``collect.balanced_k`` selection if set."""
        records = self.buffer.load(rounds)
        k = self.cfg.collect.balanced_k
        return balanced_selection(records, k, seed=self.cfg.seed) if k else records

    def for_training(self, policy, value=None):
        """Apply the model section's memory options: gradient checkpointing, LoRA adapters."""
        m, lora = self.cfg.model, self.cfg.model.lora
        if m.gradient_checkpointing:
            enable_gradient_checkpointing(policy)
            if isinstance(value, ValueModel):
                enable_gradient_checkpointing(value.backbone)
        if lora.policy:
            policy = add_lora(policy, lora)
        if lora.value and isinstance(value, ValueModel):
            value.backbone = add_lora(value.backbone, lora)
        return policy, value

    def sampler(self, policy_dir: str | Path, section):
        """A sampler for the policy in ``policy_dir`` (see ``build_sampler``); ``close_sampler`` it when done."""
        return build_sampler(self.cfg, policy_dir, section, self.device)

    def _read_results(self) -> dict:
        path = self.dir / "run.json"
        if self.cfg.resume and path.exists():
            try:
                return json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RuntimeError(f"{path}: damaged, cannot be read ({e}); delete it to measure the evaluations "
                                   f"again (finished stages, their checkpoints and the buffer are kept)") from None
        return {}

    def _write_results(self) -> None:
        """``metrics.json``: method → split → accuracy; ``run.json``: that plus stage and buffer details.

        What another process wrote to ``run.json`` since this one read it is merged in, never overwritten: a
        process that loses a race cannot drop the record of a stage that finished (``merge_results``)."""
        if not self.main:
            return
        with open(self.dir / "run.json.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                on_disk = json.loads((self.dir / "run.json").read_text())
            except (OSError, ValueError):
                on_disk = {}
            self.results = merge_results(on_disk, self.results, self._forgotten)
            for name, content in (("run.json", self.results), ("metrics.json", self.results.get("accuracy", {}))):
                write_atomically(self.dir / name, json.dumps(content, indent=2))

    def done(self, path: Path) -> bool:
        """Whether the stage output ``path`` is there to reuse; one whose files were cut or changed since the
        stage wrote them (its manifest) raises ``CheckpointError`` naming the file and the way out."""
        if not (self.cfg.resume and path.exists()):
            return False
        verify_manifest(path, f"the finished stage '{path.name}' cannot be reused: rerun with recompute=[{path.name}] "
                              f"(it redoes the stage and those trained on it), or delete {path}")
        return True

    # ------------------------------------------------------------------ what shaped each stage (oreo.stages)
    def started(self, stage: StageId) -> bool:
        """Whether ``stage`` has outputs in the run directory, whole or partial."""
        if stage.kind == "collect":
            return (self.dir / "buffer" / f"round_{stage.round:03d}").exists() or any(
                (self.dir / "buffer").glob(f"round_{stage.round:03d}.partial*.jsonl"))
        if stage.kind == "evaluate":
            return bool(self.results.get("accuracy")) or any((self.dir / "eval").glob("*.partial*.jsonl"))
        out = self.checkpoint(stage.name)
        return out.exists() or progress_dir(out).exists()

    def check_settings(self, skip: set[str] = frozenset()) -> None:
        """Every started stage (but those named in ``skip``) must have been run with this config's settings and
        seed offset (else ``StageSettingsChanged``)."""
        for name, recorded in self.results.get("settings", {}).items():
            if name in skip:
                continue
            stage = StageId.parse(name)
            changes = differences(recorded, recorded_settings(self.plain, stage))
            if changes and self.started(stage):
                raise StageSettingsChanged(stage, changes, self.dir)

    def claim(self, stage: StageId) -> None:
        """Before ``stage`` runs or its output is reused: record the settings that shape it and its seed offset."""
        now = recorded_settings(self.plain, stage)
        recorded = self.results.get("settings", {}).get(stage.name)
        changes = differences(recorded, now) if recorded is not None else []
        if changes and self.started(stage):
            raise StageSettingsChanged(stage, changes, self.dir)
        if recorded != now:
            self.results.setdefault("settings", {})[stage.name] = now
            self._write_results()

    def _stages_present(self) -> list[str]:
        found = set(self.results.get("settings", {}))
        found |= {StageId("collect", r).name for r in Buffer(self.dir / "buffer").rounds()}
        if (self.dir / "checkpoints").is_dir():
            found |= {p.name.removesuffix(".progress") for p in (self.dir / "checkpoints").iterdir()
                      if not p.name.endswith((".tmp", ".old"))}
        return sorted(found)

    def to_recompute(self, names: list[str]) -> set[str]:
        """The stages ``recompute=names`` redoes: those named and every stage that depends on them."""
        present = self._stages_present()
        kinds = {StageId.parse(s).kind for s in present}
        for name in map(str, names):
            if name not in present and not (name and StageId.parse(name).is_kind and name in kinds):
                raise ConfigError("recompute", f"{name!r} is not a stage of {self.dir}; its stages: {present}")
        return {s for name in names for s in dependents(str(name), present)}

    def _forget(self, name: str) -> None:
        r, stage = self.results, StageId.parse(name)
        for key in ("settings", "stages", "skipped"):
            r.get(key, {}).pop(name, None)
            self._forgotten.add((key, name))
        methods = list(r.get("accuracy", {})) if stage.kind == "evaluate" else [name]
        if stage.kind == "collect":
            shutil.rmtree(self.dir / "buffer" / f"round_{stage.round:03d}", ignore_errors=True)
            for partial in (self.dir / "buffer").glob(f"round_{stage.round:03d}.partial*.jsonl"):
                partial.unlink()
            if stage.round == 0:
                r.pop("buffer", None)
                self._forgotten.add(("buffer", None))
            return
        if stage.kind != "evaluate":
            for suffix in ("", ".progress", ".tmp", ".old"):
                shutil.rmtree(self.dir / "checkpoints" / f"{name}{suffix}", ignore_errors=True)
        for method in methods:
            for key in ("accuracy", "sampled", "episodes"):
                r.get(key, {}).pop(method, None)
                self._forgotten.add((key, method))
            for path in (self.dir / "eval").glob(f"{method}-*.jsonl"):
                path.unlink()

    # ------------------------------------------------------------------ stages
    def sft(self) -> Path:
        return self.train_method("sft", Path(self.cfg.model.name_or_path))

    def collect(self, policy_dir: Path, round: int = 0) -> dict:
        """Collection round ``round`` with the policy in ``policy_dir``; returns that round's statistics."""
        c, stage = self.cfg.collect, StageId("collect", round)
        self.claim(stage)
        if c.from_file:  # the reference's released data instead of sampling
            if round not in self.buffer.rounds():
                if self.main:
                    records, report = (self.imported if round == 0 else self.import_file(id_prefix=f"r{round}-"))
                    self.buffer.append(records, round=round)
                    self.results.setdefault("stages", {})[stage.name] = {
                        "imported": str(c.from_file), "records": len(records),
                        **{f"lines with {k}": v for k, v in report.items() if k != "lines"}}
                barrier()
            return self.buffer.stats(rounds=[round])
        if not (self.cfg.resume and round in self.buffer.rounds()):
            self.seed(seed_offset(stage))
            sampler = self.sampler(policy_dir, c)
            problems = self.task.problems("train")[:c.max_problems]
            info = collect(self.task, problems, sampler, self.buffer,
                           n=c.n, temperature=c.temperature, seed=self.cfg.seed + 1000 * round,
                           round=round, meta={"policy": str(policy_dir)})
            close_sampler(sampler)
            self.logger.log("collect", round, info)
            self.results.setdefault("stages", {})[stage.name] = info
        return self.buffer.stats(rounds=[round])

    def import_file(self, id_prefix: str = "r0-") -> tuple[list, dict] | None:
        """``collect.from_file``'s records and import report (None without one); a file that cannot be imported
        into this task raises, naming the file, line and field."""
        c = self.cfg.collect
        if not c.from_file:
            return None
        if self.agent:
            raise ConfigError("collect.from_file", f"imports single-turn data ({{prompt, response, reward}} lines); "
                                                   f"task {self.task.name} plays multi-turn episodes, which that "
                                                   f"format cannot hold: collect its episodes instead (drop "
                                                   f"collect.from_file)")
        return import_reference_jsonl(c.from_file, self.task.split_steps, task=self.task.name, id_prefix=id_prefix,
                                      reward_range=self.task.reward_range,
                                      accept_out_of_range=c.accept_out_of_range_rewards)

    def collect_trees(self, policy_dir: Path, value_dir: Path | None, round: int, max_problems: int | None) -> dict:
        """Collection round ``round`` as search trees (``mcts`` settings) with the policy in ``policy_dir`` and
        the value model in ``value_dir`` (None: a fresh head on the policy, as CPL's first round) on the first
        ``max_problems`` training problems (None: all; agents: games). PUCT selection reads the policy's step
        priors (``StepPrior``; agents' turns: uniform priors)."""
        stage = StageId("collect", round)
        self.claim(stage)
        if not (self.cfg.resume and round in self.buffer.rounds()):
            self.seed(seed_offset(stage))
            sampler = self.sampler(policy_dir, self.cfg.collect)
            value = (load_value_model(value_dir, dtype=self.cfg.model.dtype) if value_dir is not None else
                     new_value_model(self.cfg, self.load(policy_dir)[0]))
            encoder = Encoder.unbounded(sampler.tokenizer)
            scorer = ValueScorer(value.to(self.device).eval(), encoder)
            prior = None
            if self.cfg.mcts.selection == "puct" and not self.agent:
                if not hasattr(sampler, "model"):
                    raise ConfigError("mcts.selection", "puct reads the policy's step priors, which needs "
                                                        "sampler.backend=hf")
                prior = StepPrior(sampler.model, encoder)
            problems = (self.task.games("train") if self.task.kind == "agent" else
                        self.task.problems("train"))[:max_problems]
            info = collect_trees(self.task, problems, sampler, scorer, self.buffer, self.cfg.mcts,
                                 seed=self.cfg.seed + 1000 * round, round=round, prior=prior,
                                 meta={"policy": str(policy_dir), "value": str(value_dir)})
            close_sampler(sampler)
            self.logger.log("collect", round, info)
            self.results.setdefault("stages", {})[stage.name] = info
        return self.buffer.stats(rounds=[round])

    def records_for(self, name: str, rounds: list[int] | None = None, keep=None) -> list:
        """What method ``name`` trains on (``METHODS[name].data``), of those the ones ``keep(record)`` accepts
        if given."""
        data = METHODS[name].data
        if data == "teacher":
            return self.task.sft_records(self.cfg.seed, self.cfg.method(name).n_per_problem)
        records = self.training_records(rounds)
        records = [r for r in records if r.correct] if data == "correct" else records
        return records if keep is None else [r for r in records if keep(r)]

    def train_method(self, stage: StageId | str, init_dir: Path, *, ref_dir: Path | None = None,
                     value_dir: Path | None = None, rounds: list[int] | None = None, keep=None, records_fn=None,
                     method_cfg=None) -> Path | None:
        """Stage ``stage`` (a name: the plain pipeline's stage of that method) trains its kind's method
        (``oreo.trainers.METHODS``) from the policy in ``init_dir`` on its records (of the buffer's ``rounds``,
        default all; or ``records_fn()``, if given), anchored to the reference in ``ref_dir`` (default:
        ``init_dir``) if it uses one; OREO's value model warm-starts from ``value_dir`` if given; ``keep(record)``,
        if given, selects among the records; ``method_cfg`` replaces the method's config section. Returns the
        trained policy's folder, or ``None`` (and the reason in run.json) when there is less than one batch of
        data."""
        stage = stage_id(stage)
        name = kind_of(stage).method
        if name is None:
            raise ValueError(f"stage {stage} trains no method")
        method, out = METHODS[name], self.checkpoint(stage.name)
        self.claim(stage)
        if not self.done(out):
            records = records_fn() if records_fn is not None else self.records_for(name, rounds, keep)
            self.seed(seed_offset(stage))
            cfg = method_cfg or self.cfg.method(name)
            policy, tokenizer = self.load(init_dir)
            kwargs = {}
            if method.reference:
                ref_dir = ref_dir or init_dir
                kwargs = {"reference": self.load(ref_dir)[0], "cache_dir": self.dir / "cache",
                          "ref_name": reference_name(ref_dir, self.cfg.model.dtype)}
            value, shared = None, getattr(cfg, "shared_backbone", False)
            if method.value:
                value = (ValueModel.from_pretrained(value_dir, dtype=self.cfg.model.dtype).to(self.device)
                         if value_dir is not None and not shared else
                         new_value_model(self.cfg, policy, shared=shared))  # before adapters
            policy, value = self.for_training(policy, value)
            if value is not None:
                kwargs["value"] = value
            objective = method.objective(policy, tokenizer, cfg, **kwargs)
            try:
                info = objective.fit(records, engine=self.cfg.engine, logger=self.logger, out_dir=out,
                                     resume=self.cfg.resume, stage=stage.name)
            except NotEnoughData as e:
                if method.data == "teacher":
                    raise
                reason = f"{len(records)} records ({method.data}) gave {e}"
                print(f"{stage.name} skipped: {reason}", flush=True)
                self.results.setdefault("skipped", {})[stage.name] = reason
                return None
            self.results.setdefault("stages", {})[stage.name] = info
        return out / method.policy_dir if method.policy_dir else out

    def oreo(self, init_dir: Path, *, ref_dir: Path | None = None, value_dir: Path | None = None,
             rounds: list[int] | None = None, round: int | None = None) -> Path:
        """OREO (stage ``oreo``, or ``oreo_roundK`` of a driver's round ``round``) from the policy in ``init_dir``
        against the reference in ``ref_dir`` (default: the same), on the buffer's ``rounds`` (default: all); the
        value model warm-starts from ``value_dir`` if given."""
        return self.train_method(StageId("oreo", round), init_dir, ref_dir=ref_dir, value_dir=value_dir, rounds=rounds)

    def evaluate(self, method: str, policy_dir: Path) -> dict:
        """Greedy accuracy per split (agents: greedy success rate) in ``metrics.json`` and, with
        ``evaluate.sampled.n > 0``, pass@k and maj@k (``run.json``, "sampled"; agents: turns, tokens and
        success per goal kind, "episodes"); what a previous run already measured is kept."""
        self.claim(StageId("evaluate"))
        splits = list(self.cfg.evaluate.splits)
        have = {split: acc for split, acc in self.results.get("accuracy", {}).get(method, {}).items()
                if self.eval_file_whole(method, split)}
        sampled_cfg = self.cfg.evaluate.sampled
        n_samples = sampled_cfg.n
        have_sampled = self.results.get("sampled", {}).get(method, {})
        todo = [s for s in splits if s not in have]
        todo_sampled = [s for s in splits if s not in have_sampled] if n_samples > 0 and not self.agent else []
        if not todo and not todo_sampled:
            return have
        sampler = self.sampler(policy_dir, self.cfg.evaluate)
        # what an interrupted episode evaluation's finished blocks must match to be reused
        fingerprint = {"policy": str(policy_dir), "weights": weights_stamp(policy_dir), "seed": self.cfg.seed,
                       "max_new_tokens": self.cfg.evaluate.max_new_tokens}
        for split in todo:
            out_path, desc = self.dir / "eval" / f"{method}-{split}.jsonl", f"evaluate {method}/{split}"
            if self.agent:
                r = evaluate_episodes(self.task, self.task.problems(split), sampled_actions(sampler, temperature=0.0),
                                      out_path=out_path, seed=self.cfg.seed, fingerprint=fingerprint,
                                      games_per_batch=self.cfg.evaluate.batch_size, desc=desc)
                self.results.setdefault("episodes", {}).setdefault(method, {})[split] = r
                have[split] = r["success"]
            else:
                have[split] = evaluate_greedy(self.task, self.task.problems(split), sampler, out_path=out_path,
                                              desc=desc)["accuracy"]
            self.logger.log("evaluate", 0, {f"{method}/{split}": have[split]})
        self.results.setdefault("accuracy", {})[method] = have
        for split in todo_sampled:
            r = evaluate_sampled(self.task, self.task.problems(split), sampler, n=n_samples,
                                 temperature=sampled_cfg.temperature, ks=list(sampled_cfg.ks),
                                 seed=self.cfg.seed, desc=f"sample {method}/{split}",
                                 out_path=self.dir / "eval" / f"{method}-{split}-samples.jsonl")
            self.results.setdefault("sampled", {}).setdefault(method, {})[split] = r
            self.logger.log("evaluate", 0, {f"{method}/{split}/{k}": v for k, v in r.items()})
        close_sampler(sampler)
        self._write_results()
        return have

    def eval_file_whole(self, method: str, split: str) -> bool:
        """Whether ``eval/METHOD-SPLIT.jsonl`` holds one readable row per problem (game) of ``split``; if not,
        the evaluation is measured again rather than reported from what is left of it."""
        path = self.dir / "eval" / f"{method}-{split}.jsonl"
        expected = len(self.task.problems(split))
        try:
            lines = [line for line in path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            lines, found = None, f"unreadable ({type(e).__name__})"
        if lines is not None:
            whole = sum(parses_json(line) for line in lines)
            if whole == len(lines) == expected:
                return True
            found = f"{whole} of {expected} rows" + (f" and {len(lines) - whole} damaged" if whole < len(lines) else "")
        if self.main:
            print(f"{path}: {found}; measuring {method} on {split} again", flush=True)
        return False

    def value_init(self, name: str) -> Path | None:
        """The value model method ``name`` starts from, if not a fresh one: the PRM's with ``prm.init=oreo``."""
        if name != "prm" or self.cfg.prm.init != "oreo":
            return None
        value = self.checkpoint("oreo") / "value"
        if not (value / "config.json").exists():
            raise ConfigError("prm.init", f"oreo starts the PRM from the OREO value, and {value} holds no value model "
                                          f"(run the oreo stage first, stages=[...,oreo,prm], without "
                                          f"oreo.shared_backbone)")
        return value

    def run(self) -> dict:
        stages = list(self.cfg.stages)
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")
        if "prm" in stages and "oreo" not in stages:
            self.value_init("prm")   # fails now, not after SFT, when there is no OREO value to start from
        sft_dir = self.sft() if "sft" in stages else Path(self.cfg.model.name_or_path)
        self.evaluate("sft", sft_dir)
        if "collect" in stages:
            self.results["buffer"] = self.collect(sft_dir, round=0)
            self._write_results()
        for name in STAGES[2:]:  # the trained methods, each from the SFT model
            if name not in stages:
                continue
            out = self.train_method(name, sft_dir, value_dir=self.value_init(name))
            if out is not None and METHODS[name].policy:
                self.evaluate(name, out)
        self._write_results()
        self.close()
        if self.main:
            print(format_table(self.results["accuracy"], list(self.cfg.evaluate.splits)))
            print(f"results: {self.dir / 'metrics.json'}")
        barrier()
        return self.results


def merge_results(on_disk: dict, mine: dict, forgotten: set) -> dict:
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


def format_table(accuracy: dict, splits: list[str]) -> str:
    """Method × split greedy accuracy (%) as a text table."""
    lines = [f"{'method':<8}" + "".join(f"{s:>10}" for s in splits)]
    for method, row in accuracy.items():
        lines.append(f"{method:<8}" + "".join(f"{100 * row.get(s, float('nan')):>9.1f}%" for s in splits))
    return "\n".join(lines)
