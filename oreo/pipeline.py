"""The stages of a run — SFT, collect, RFT, OREO — and the evaluation after each, from one config.

Every stage writes its output into the run directory and is skipped when that output is already
there (``resume=true``), so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from oreo.buffer import Buffer, import_reference_jsonl
from oreo.checkpoint import verify_manifest, weights_stamp
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
from oreo.run_dir import RunDir
from oreo.run_lock import RunDirLock
from oreo.run_record import RunRecord
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
from oreo.settings_ledger import SettingsLedger
from oreo.stages import StageId, kind_of, seed_offset, stage_id
from oreo.tasks import make_task
from oreo.trainers import METHODS
from oreo.trainers.common import NotEnoughData, TrainConfig
from oreo.trainers.reference import reference_name

# what `stages` may name, in the order they run: the SFT model is trained, the buffer collected, then
# each trained method starts from the SFT model on its data (oreo.trainers.METHODS) and is evaluated
STAGES = ("sft", "collect", "rft", "oreo", "dpo", "kto", "prm", "step_apo", "simpo")


class Run:
    """One run's stages, on its directory's files (``RunDir``), its record (``RunRecord``, ``run.json``) and the
    ledger of its stages' settings (``SettingsLedger``)."""

    def __init__(self, cfg: RunConfig):
        self.plain = as_dict(cfg)  # what run.json's stage settings are read from
        check_inputs(cfg)
        check_value_backbone(cfg)   # what would fail after hours of SFT fails now
        quiet_library_progress_bars()
        self.cfg = cfg
        self.files = RunDir(cfg.run_dir)
        self.dir = self.files.path
        # Under torchrun every rank runs this; rank 0 alone writes the run's files (run_dir must be
        # shared by all nodes), the others take their share of collection, evaluation and training.
        self.rank, self.world = init_distributed() if rank_world()[1] > 1 else (0, 1)
        self.main = self.rank == 0
        if not cfg.resume and self.files.holds_a_run():
            raise FileExistsError(f"{self.dir} holds an earlier run, and resume=false would mix its outputs with "
                                  f"new ones: use a new run_dir, or delete {self.dir} first")
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
        self._read_record()
        redo = self.ledger.to_recompute(list(cfg.recompute))
        self.ledger.check(skip=redo)  # before config.yaml says anything about this run
        if self.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stage in sorted(redo):
                self.ledger.forget(stage)
                print(f"recompute: removed the outputs of '{stage}'", flush=True)
            if redo:
                self._write_record()
            self.files.write_config(to_yaml(cfg))
        barrier()
        if not self.main:
            self._read_record()  # as rank 0 left it after recompute
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device(cfg.device)
        self.buffer = Buffer(self.files.buffer)
        self.logger = MetricsLogger(self.dir, wandb_cfg=as_dict(cfg.wandb),
                                    config=self.plain, enabled=self.main)

    def _hold_directory(self) -> RunDirLock | None:
        """Rank 0 locks the run directory for the whole job (``oreo.run_lock``); the other ranks take its
        verdict, so when another run holds the directory every rank fails with the same error, none waits at a
        barrier for a rank that has failed."""
        lock, error = None, None
        if self.main:
            try:
                lock = self.files.lock()
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
        return self.files.checkpoint(name)

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

    def _read_record(self) -> None:
        """The run's record (``run.json``, on resume) and the ledger of its stages' settings kept in it."""
        self.record = self.files.read_record() if self.cfg.resume else RunRecord()
        self.ledger = SettingsLedger(self.files, self.record, self.plain, save=self._write_record)

    def _write_record(self) -> None:
        """``metrics.json``: method → split → accuracy; ``run.json``: that plus stage and buffer details, merged
        with what another process wrote since (``RunDir.write_record``)."""
        if self.main:
            self.files.write_record(self.record)

    def record_rounds(self, rows: list[dict]) -> None:
        """Record a multi-round driver's per-round table in run.json ("rounds")."""
        self.record.rounds = rows
        self._write_record()

    def done(self, path: Path) -> bool:
        """Whether the stage output ``path`` is there to reuse; one whose files were cut or changed since the
        stage wrote them (its manifest) raises ``CheckpointError`` naming the file and the way out."""
        if not (self.cfg.resume and path.exists()):
            return False
        verify_manifest(path, f"the finished stage '{path.name}' cannot be reused: rerun with recompute=[{path.name}] "
                              f"(it redoes the stage and those trained on it), or delete {path}")
        return True

    # ------------------------------------------------------------------ stages
    def sft(self) -> Path:
        return self.train_method("sft", Path(self.cfg.model.name_or_path))

    def collect(self, policy_dir: Path, round: int = 0) -> dict:
        """Collection round ``round`` with the policy in ``policy_dir``; returns that round's statistics."""
        c, stage = self.cfg.collect, StageId("collect", round)
        self.ledger.claim(stage)
        if c.from_file:  # the reference's released data instead of sampling
            if round not in self.buffer.rounds():
                if self.main:
                    records, report = (self.imported if round == 0 else self.import_file(id_prefix=f"r{round}-"))
                    self.buffer.append(records, round=round)
                    self.record.record_stage(stage.name, {
                        "imported": str(c.from_file), "records": len(records),
                        **{f"lines with {k}": v for k, v in report.items() if k != "lines"}})
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
            self.record.record_stage(stage.name, info)
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
        self.ledger.claim(stage)
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
            self.record.record_stage(stage.name, info)
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
        self.ledger.claim(stage)
        if not self.done(out):
            records = records_fn() if records_fn is not None else self.records_for(name, rounds, keep)
            self.seed(seed_offset(stage))
            cfg = method_cfg or self.cfg.method(name)
            policy, tokenizer = self.load(init_dir)
            kwargs = {}
            if method.reference:
                ref_dir = ref_dir or init_dir
                kwargs = {"reference": self.load(ref_dir)[0], "cache_dir": self.files.cache,
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
                self.record.record_skipped(stage.name, reason)
                return None
            self.record.record_stage(stage.name, info)
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
        self.ledger.claim(StageId("evaluate"))
        splits = list(self.cfg.evaluate.splits)
        have = {split: acc for split, acc in (self.record.accuracy or {}).get(method, {}).items()
                if self.eval_file_whole(method, split)}
        sampled_cfg = self.cfg.evaluate.sampled
        n_samples = sampled_cfg.n
        have_sampled = (self.record.sampled or {}).get(method, {})
        todo = [s for s in splits if s not in have]
        todo_sampled = [s for s in splits if s not in have_sampled] if n_samples > 0 and not self.agent else []
        if not todo and not todo_sampled:
            return have
        sampler = self.sampler(policy_dir, self.cfg.evaluate)
        # what an interrupted episode evaluation's finished blocks must match to be reused
        fingerprint = {"policy": str(policy_dir), "weights": weights_stamp(policy_dir), "seed": self.cfg.seed,
                       "max_new_tokens": self.cfg.evaluate.max_new_tokens}
        for split in todo:
            out_path, desc = self.files.eval_file(method, split), f"evaluate {method}/{split}"
            if self.agent:
                r = evaluate_episodes(self.task, self.task.problems(split), sampled_actions(sampler, temperature=0.0),
                                      out_path=out_path, seed=self.cfg.seed, fingerprint=fingerprint,
                                      games_per_batch=self.cfg.evaluate.batch_size, desc=desc)
                self.record.record_episodes(method, split, r)
                have[split] = r["success"]
            else:
                have[split] = evaluate_greedy(self.task, self.task.problems(split), sampler, out_path=out_path,
                                              desc=desc)["accuracy"]
            self.logger.log("evaluate", 0, {f"{method}/{split}": have[split]})
        self.record.record_accuracy(method, have)
        for split in todo_sampled:
            r = evaluate_sampled(self.task, self.task.problems(split), sampler, n=n_samples,
                                 temperature=sampled_cfg.temperature, ks=list(sampled_cfg.ks),
                                 seed=self.cfg.seed, desc=f"sample {method}/{split}",
                                 out_path=self.files.eval_file(method, split, samples=True))
            self.record.record_sampled(method, split, r)
            self.logger.log("evaluate", 0, {f"{method}/{split}/{k}": v for k, v in r.items()})
        close_sampler(sampler)
        self._write_record()
        return have

    def eval_file_whole(self, method: str, split: str) -> bool:
        """Whether ``eval/METHOD-SPLIT.jsonl`` holds one readable row per problem (game) of ``split``; if not,
        the evaluation is measured again rather than reported from what is left of it."""
        path = self.files.eval_file(method, split)
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

    def run(self) -> RunRecord:
        """The configured stages, each evaluated; returns the run's record."""
        stages = list(self.cfg.stages)
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")
        if "prm" in stages and "oreo" not in stages:
            self.value_init("prm")   # fails now, not after SFT, when there is no OREO value to start from
        sft_dir = self.sft() if "sft" in stages else Path(self.cfg.model.name_or_path)
        self.evaluate("sft", sft_dir)
        if "collect" in stages:
            self.record.buffer = self.collect(sft_dir, round=0)
            self._write_record()
        for name in STAGES[2:]:  # the trained methods, each from the SFT model
            if name not in stages:
                continue
            out = self.train_method(name, sft_dir, value_dir=self.value_init(name))
            if out is not None and METHODS[name].policy:
                self.evaluate(name, out)
        self._write_record()
        self.close()
        if self.main:
            print(format_table(self.record.accuracy, list(self.cfg.evaluate.splits)))
            print(f"results: {self.files.metrics_json}")
        barrier()
        return self.record


def format_table(accuracy: dict, splits: list[str]) -> str:
    """Method × split greedy accuracy (%) as a text table."""
    lines = [f"{'method':<8}" + "".join(f"{s:>10}" for s in splits)]
    for method, row in accuracy.items():
        lines.append(f"{method:<8}" + "".join(f"{100 * row.get(s, float('nan')):>9.1f}%" for s in splits))
    return "\n".join(lines)
