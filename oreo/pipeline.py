"""The stages of a run — SFT, collect, RFT, OREO — and the evaluation after each, from one config.

Every stage writes its output into the run directory and is skipped when that output is already
there (``resume=true``), so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from oreo.buffer import Buffer, import_reference_jsonl
from oreo.checkpoint import weights_stamp
from oreo.distributed import barrier, init_distributed, local_rank, rank_world
from oreo.encode import Encoder
from oreo.evaluate import evaluate_episodes, evaluate_greedy, evaluate_sampled
from oreo.lora import LoRAConfig, add_lora
from oreo.metrics import MetricsLogger
from oreo.models import ValueModel, enable_gradient_checkpointing, load_policy, resolve_model_path
from oreo.rollout.collector import collect
from oreo.rollout.episodes import sampled_actions
from oreo.rollout.sampler import HFSampler
from oreo.rollout.vllm_sampler import vllm_available
from oreo.rollout.selection import balanced_selection
from oreo.tasks import make_task
from oreo.trainers.common import TrainConfig
from oreo.trainers.oreo import OREOConfig, OREOTrainer
from oreo.trainers.sft import train_sft

METHODS = ("sft", "rft", "oreo")


def train_config(section, engine=None) -> TrainConfig:
    """A stage's ``train`` section plus the run's ``engine`` section."""
    values = OmegaConf.to_container(section, resolve=True)
    if engine is not None:
        e = OmegaConf.to_container(engine, resolve=True)
        values.update(engine=e.pop("backend", "torch"), **e)
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise ValueError(f"training config: {e}; known keys: {list(TrainConfig.__dataclass_fields__)}") from None


def oreo_config(section) -> OREOConfig:
    values = OmegaConf.to_container(section, resolve=True)
    values.pop("train", None)
    try:
        return OREOConfig(**values)
    except TypeError as e:
        raise ValueError(f"oreo config: {e}; known keys: {list(OREOConfig.__dataclass_fields__)}") from None


def lora_config(model_section) -> LoRAConfig:
    values = OmegaConf.to_container(model_section.get("lora") or {}, resolve=True)
    try:
        return LoRAConfig(**values)
    except TypeError as e:
        raise ValueError(f"model.lora: {e}; known keys: {list(LoRAConfig.__dataclass_fields__)}") from None


class Run:
    """One run directory: config, metrics, buffer, checkpoints."""

    def __init__(self, cfg: DictConfig):
        quiet_library_progress_bars()
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        # Under torchrun every rank runs this; rank 0 alone writes the run's files (run_dir must be
        # shared by all nodes), the others take their share of collection, evaluation and training.
        self.rank, self.world = init_distributed() if rank_world()[1] > 1 else (0, 1)
        self.main = self.rank == 0
        if self.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        barrier()
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.device = pick_device(cfg.device)
        self.task = make_task(OmegaConf.to_container(cfg.task, resolve=True))
        self.agent = getattr(self.task, "is_agent", False)  # multi-turn episodes in an environment
        self.buffer = Buffer(self.dir / "buffer")
        self.logger = MetricsLogger(self.dir, wandb_cfg=OmegaConf.to_container(cfg.wandb),
                                    config=OmegaConf.to_container(cfg, resolve=True), enabled=self.main)
        self.results = self._read_results()

    # ------------------------------------------------------------------ helpers
    def checkpoint(self, name: str) -> Path:
        return self.dir / "checkpoints" / name

    def seed(self, offset: int = 0) -> None:
        seed = int(self.cfg.seed) + offset
        random.seed(seed)
        torch.manual_seed(seed)

    def load(self, path_or_name: str | Path):
        return load_model(self.cfg, path_or_name, self.device)

    def train_config(self, stage: str) -> TrainConfig:
        return train_config(self.cfg[stage].train, self.cfg.get("engine"))

    def training_records(self, rounds: list[int] | None = None) -> list[dict]:
        """The buffer's trajectories (of ``rounds``), after ``collect.balanced_k`` selection if set."""
        records = self.buffer.load(rounds)
        k = self.cfg.collect.get("balanced_k")
        return balanced_selection(records, int(k), seed=int(self.cfg.seed)) if k else records

    def for_training(self, policy, value=None):
        """Apply the model section's memory options: gradient checkpointing, LoRA adapters."""
        m, lora = self.cfg.model, lora_config(self.cfg.model)
        if m.get("gradient_checkpointing", False):
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
            return json.loads(path.read_text())
        return {}

    def _write_results(self) -> None:
        """``metrics.json``: method → split → accuracy; ``run.json``: that plus stage and buffer details."""
        if not self.main:
            return
        for name, content in (("run.json", self.results), ("metrics.json", self.results.get("accuracy", {}))):
            tmp = self.dir / f"{name}.tmp"
            tmp.write_text(json.dumps(content, indent=2))
            os.replace(tmp, self.dir / name)

    def done(self, path: Path) -> bool:
        return bool(self.cfg.resume) and path.exists()

    # ------------------------------------------------------------------ stages
    def sft(self) -> Path:
        out = self.checkpoint("sft")
        if not self.done(out):
            self.seed(1)
            model, tokenizer = self.load(self.cfg.model.name_or_path)
            model, _ = self.for_training(model)
            records = self.task.sft_records(int(self.cfg.seed), int(self.cfg.sft.n_per_problem))
            info = train_sft(model, tokenizer, records, self.train_config("sft"), max_len=int(self.cfg.sft.max_len),
                             logger=self.logger, stage="sft", out_dir=out, resume=bool(self.cfg.resume))
            self.results.setdefault("stages", {})["sft"] = info
        return out

    def collect(self, policy_dir: Path, round: int = 0) -> dict:
        """Collection round ``round`` with the policy in ``policy_dir``; returns that round's statistics."""
        c = self.cfg.collect
        if c.get("from_file"):  # the reference's released data instead of sampling
            if round not in self.buffer.rounds():
                if self.main:
                    records = import_reference_jsonl(c.from_file, self.task.split_steps, task=self.task.name)
                    self.buffer.append(records, round=round)
                    self.results.setdefault("stages", {})[f"collect_{round}"] = {"imported": str(c.from_file),
                                                                                 "records": len(records)}
                barrier()
            return self.buffer.stats(rounds=[round])
        if not (self.cfg.resume and round in self.buffer.rounds()):
            self.seed(2 + 100 * round)
            sampler = self.sampler(policy_dir, c)
            problems = self.task.problems("train")[:c.get("max_problems")]
            info = collect(self.task, problems, sampler, self.buffer,
                           n=int(c.n), temperature=float(c.temperature), seed=int(self.cfg.seed) + 1000 * round,
                           round=round, meta={"policy": str(policy_dir)})
            close_sampler(sampler)
            self.logger.log("collect", round, info)
            self.results.setdefault("stages", {})[f"collect_{round}"] = info
        return self.buffer.stats(rounds=[round])

    def rft(self, sft_dir: Path) -> Path | None:
        """SFT on the buffer's correct samples; ``None`` (and the reason in run.json) if too few."""
        out = self.checkpoint("rft")
        if not self.done(out):
            records = [r for r in self.training_records() if r.correct]
            batch = int(self.cfg.rft.train.batch_size)
            if len(records) < batch:
                reason = f"{len(records)} correct samples in the buffer, fewer than one batch ({batch})"
                print(f"RFT skipped: {reason}", flush=True)
                self.results.setdefault("skipped", {})["rft"] = reason
                return None
            self.seed(3)
            model, tokenizer = self.load(sft_dir)
            model, _ = self.for_training(model)
            info = train_sft(model, tokenizer, records, self.train_config("rft"),
                             max_len=int(self.cfg.rft.max_len), logger=self.logger, stage="rft", out_dir=out,
                             resume=bool(self.cfg.resume))
            self.results.setdefault("stages", {})["rft"] = info
        return out

    def oreo(self, init_dir: Path, *, ref_dir: Path | None = None, value_dir: Path | None = None,
             rounds: list[int] | None = None, name: str = "oreo") -> Path:
        """OREO from the policy in ``init_dir`` against the reference in ``ref_dir`` (default: the same),
        on the buffer's ``rounds`` (default: all); the value model warm-starts from ``value_dir`` if given."""
        out = self.checkpoint(name)
        if not self.done(out):
            self.seed(4)
            ref_dir = ref_dir or init_dir
            policy, tokenizer = self.load(init_dir)
            reference, _ = self.load(ref_dir)
            cfg = oreo_config(self.cfg.oreo)
            value = None
            if value_dir is not None and not cfg.shared_backbone:
                value = ValueModel.from_pretrained(value_dir, dtype=self.cfg.model.dtype).to(self.device)
            elif not cfg.shared_backbone:
                value = ValueModel.from_policy(policy)  # before any adapters: its own copy of the weights
            policy, value = self.for_training(policy, value)
            trainer = OREOTrainer(policy, tokenizer, cfg, self.train_config("oreo"), reference=reference,
                                  value=value)
            info = trainer.fit(self.training_records(rounds), logger=self.logger, cache_dir=self.dir / "cache",
                               ref_name=f"{ref_dir}|{self.cfg.model.dtype}", out_dir=out, stage=name,
                               resume=bool(self.cfg.resume))
            self.results.setdefault("stages", {})[name] = info
        return out / "policy"

    def evaluate(self, method: str, policy_dir: Path) -> dict:
        """Greedy accuracy per split (agents: greedy success rate) in ``metrics.json`` and, with
        ``evaluate.sampled.n > 0``, pass@k and maj@k (``run.json``, "sampled"; agents: turns, tokens and
        success per goal kind, "episodes"); what a previous run already measured is kept."""
        splits = list(self.cfg.evaluate.splits)
        have = self.results.get("accuracy", {}).get(method, {})
        sampled_cfg = self.cfg.evaluate.get("sampled") or {}
        n_samples = int(sampled_cfg.get("n", 0))
        have_sampled = self.results.get("sampled", {}).get(method, {})
        todo = [s for s in splits if s not in have]
        todo_sampled = [s for s in splits if s not in have_sampled] if n_samples > 0 and not self.agent else []
        if not todo and not todo_sampled:
            return have
        sampler = self.sampler(policy_dir, self.cfg.evaluate)
        # what an interrupted episode evaluation's finished blocks must match to be reused
        fingerprint = {"policy": str(policy_dir), "weights": weights_stamp(policy_dir), "seed": int(self.cfg.seed),
                       "max_new_tokens": int(self.cfg.evaluate.max_new_tokens)}
        for split in todo:
            out_path, desc = self.dir / "eval" / f"{method}-{split}.jsonl", f"evaluate {method}/{split}"
            if self.agent:
                r = evaluate_episodes(self.task, self.task.problems(split), sampled_actions(sampler, temperature=0.0),
                                      out_path=out_path, seed=int(self.cfg.seed), fingerprint=fingerprint,
                                      games_per_batch=int(self.cfg.evaluate.batch_size), desc=desc)
                self.results.setdefault("episodes", {}).setdefault(method, {})[split] = r
                have[split] = r["success"]
            else:
                have[split] = evaluate_greedy(self.task, self.task.problems(split), sampler, out_path=out_path,
                                              desc=desc)["accuracy"]
            self.logger.log("evaluate", 0, {f"{method}/{split}": have[split]})
        self.results.setdefault("accuracy", {})[method] = have
        for split in todo_sampled:
            r = evaluate_sampled(self.task, self.task.problems(split), sampler, n=n_samples,
                                 temperature=float(sampled_cfg.temperature), ks=list(sampled_cfg.ks),
                                 seed=int(self.cfg.seed), desc=f"sample {method}/{split}",
                                 out_path=self.dir / "eval" / f"{method}-{split}-samples.jsonl")
            self.results.setdefault("sampled", {}).setdefault(method, {})[split] = r
            self.logger.log("evaluate", 0, {f"{method}/{split}/{k}": v for k, v in r.items()})
        close_sampler(sampler)
        self._write_results()
        return have

    def run(self) -> dict:
        stages = list(self.cfg.stages)
        unknown = set(stages) - {"sft", "collect", "rft", "oreo"}
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; known: sft, collect, rft, oreo")
        sft_dir = self.sft() if "sft" in stages else Path(self.cfg.model.name_or_path)
        self.evaluate("sft", sft_dir)
        if "collect" in stages:
            self.results["buffer"] = self.collect(sft_dir, round=0)
            self._write_results()
        if "rft" in stages and (rft_dir := self.rft(sft_dir)) is not None:
            self.evaluate("rft", rft_dir)
        if "oreo" in stages:
            self.evaluate("oreo", self.oreo(sft_dir))
        self._write_results()
        self.logger.close()
        if self.main:
            print(format_table(self.results["accuracy"], list(self.cfg.evaluate.splits)))
            print(f"results: {self.dir / 'metrics.json'}")
        barrier()
        return self.results


def pick_device(name: str) -> torch.device:
    """``auto``: this rank's GPU if there is one, else the CPU; otherwise the device named."""
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                          ("cpu" if name == "auto" else name))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    return device


def load_model(cfg: DictConfig, path_or_name: str | Path, device: torch.device):
    """``(model, tokenizer)`` of the policy at ``path_or_name`` with the model section's settings."""
    m = cfg.model
    model, tokenizer = load_policy(str(path_or_name), dtype=m.dtype, tiny=OmegaConf.to_container(m.tiny)
                                   if "tiny" in m else None, trust_remote_code=m.trust_remote_code,
                                   attn_implementation=m.attn_implementation, seed=int(cfg.seed))
    return model.to(device), tokenizer


def build_sampler(cfg: DictConfig, policy_dir: str | Path, section, device: torch.device):
    """A sampler for the policy in ``policy_dir``, of the backend ``sampler.backend`` chooses, with
    ``section``'s batch size and token limit."""
    backend = str(cfg.get("sampler", {}).get("backend", "hf"))
    if backend not in ("hf", "vllm", "auto"):
        raise ValueError(f"sampler.backend must be hf, vllm or auto, got {backend!r}")
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        from transformers import AutoTokenizer

        from oreo.rollout.vllm_sampler import VLLMSampler

        path = resolve_model_path(str(policy_dir))
        tokenizer = AutoTokenizer.from_pretrained(path)
        return VLLMSampler(path, tokenizer, Encoder(tokenizer, max_len=10**9),
                           batch_size=int(section.batch_size), max_new_tokens=int(section.max_new_tokens),
                           dtype=str(cfg.model.dtype), seed=int(cfg.seed),
                           gpu_memory_utilization=float(cfg.sampler.gpu_memory_utilization))
    model, tokenizer = load_model(cfg, policy_dir, device)
    return HFSampler(model, tokenizer, Encoder(tokenizer, max_len=10**9), batch_size=int(section.batch_size),
                     max_new_tokens=int(section.max_new_tokens))


def close_sampler(sampler) -> None:
    """Free what a sampler holds (a vLLM engine's GPU memory) before the next stage trains."""
    if hasattr(sampler, "close"):
        sampler.close()


def quiet_library_progress_bars() -> None:
    """Our own bars cover the long loops; the libraries' per-shard and per-file bars are noise."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def format_table(accuracy: dict, splits: list[str]) -> str:
    """Method × split greedy accuracy (%) as a text table."""
    lines = [f"{'method':<8}" + "".join(f"{s:>10}" for s in splits)]
    for method, row in accuracy.items():
        lines.append(f"{method:<8}" + "".join(f"{100 * row.get(s, float('nan')):>9.1f}%" for s in splits))
    return "\n".join(lines)
