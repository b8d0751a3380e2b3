"""``lora-trainer``: train, evaluate, merge and register LoRA adapters.

    lora-trainer train --base-model MODEL_DIR --data rows.jsonl --output adapters/my-lora \
        [--default-temperature 0.2 --default-top-p 0.9 ...]
    lora-trainer eval adapters/my-lora
    lora-trainer merge adapters/my-lora --output models/my-lora-merged
    lora-trainer combine adapters/a adapters/b --weights 0.7,0.3 --method cat --output adapters/ab
    lora-trainer register adapters/my-lora --url http://127.0.0.1:8000 --name my-lora

The console script ``lora-trainer`` (pyproject) calls :func:`main`. Each command parses flags
into the typed objects of the package (:class:`trainer.config.TrainConfig`, ...), calls one
function and renders its result. Bad input exits with status 2 and one line naming the value;
a gateway that refuses a registration exits with status 1.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from adapters.contract import MANIFEST
from adapters.errors import AdapterError
from trainer.config import ConfigError, Method, Optimizer, Scheduler, TrainConfig
from trainer.data import DataError
from trainer.models import ModelLoadError
from trainer.register import register_adapter

console = Console(stderr=True)
T = TypeVar("T")
_DEFAULTS_HELP = (
    "Sampling default written to the manifest's sampling_defaults: the gateway uses it when a "
    "request to this adapter omits the parameter."
)

app = typer.Typer(
    name="lora-trainer",
    help="Train LoRA / QLoRA / DoRA / DPO adapters that lora-gateway serves.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def train(
    base_model: Annotated[Path, typer.Option(help="Base model directory (config.json).")],
    data: Annotated[Path, typer.Option(help="JSONL rows: chat, alpaca, prompt/completion, DPO.")],
    output: Annotated[Path, typer.Option(help="Adapter directory to write.")],
    method: Method = Method.LORA,
    rank: Annotated[int, typer.Option(help="LoRA rank (one vLLM serves: 8, 16, 32, ...).")] = 16,
    alpha: Annotated[int | None, typer.Option(help="LoRA alpha (default: 2 x rank).")] = None,
    dropout: float = 0.05,
    target_modules: Annotated[
        str, typer.Option(help="'attention' (q,k,v,o), 'all-linear', or names: q_proj,v_proj.")
    ] = "attention",
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-4,
    scheduler: Scheduler = Scheduler.COSINE,
    warmup_ratio: float = 0.03,
    epochs: float = 1.0,
    max_steps: Annotated[int | None, typer.Option(help="Overrides --epochs when set.")] = None,
    batch_size: int = 4,
    grad_accum: int = 1,
    max_seq_len: int = 512,
    gradient_checkpointing: bool = False,
    optimizer: Annotated[
        Optimizer | None,
        typer.Option(help="(default: paged_adamw_8bit for qlora, adamw_torch otherwise)"),
    ] = None,
    seed: int = 42,
    eval_fraction: Annotated[float, typer.Option(help="Share of rows held out.")] = 0.1,
    beta: Annotated[float, typer.Option(help="DPO beta (method dpo only).")] = 0.1,
    logging_steps: int = 5,
    register: Annotated[
        str | None, typer.Option(help="Gateway URL: register the adapter when trained.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Adapter name (default: output dir).")] = None,
    admin_token: Annotated[
        str | None, typer.Option(envvar="LORA_GATEWAY_ADMIN_TOKEN", show_envvar=True)
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --output.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    default_temperature: Annotated[float | None, typer.Option(help=_DEFAULTS_HELP)] = None,
    default_top_p: Annotated[float | None, typer.Option(help=_DEFAULTS_HELP)] = None,
    default_top_k: Annotated[int | None, typer.Option(help=_DEFAULTS_HELP)] = None,
    default_min_p: Annotated[float | None, typer.Option(help=_DEFAULTS_HELP)] = None,
    default_max_tokens: Annotated[int | None, typer.Option(help=_DEFAULTS_HELP)] = None,
    default_stop: Annotated[
        list[str] | None, typer.Option(help=_DEFAULTS_HELP + " Repeat for several.")
    ] = None,
    default_frequency_penalty: Annotated[float | None, typer.Option(help=_DEFAULTS_HELP)] = None,
    default_presence_penalty: Annotated[float | None, typer.Option(help=_DEFAULTS_HELP)] = None,
    default_repetition_penalty: Annotated[float | None, typer.Option(help=_DEFAULTS_HELP)] = None,
) -> None:
    """Train an adapter with TRL (SFTTrainer, or DPOTrainer for --method dpo)."""
    from trainer.train import configure_offline_defaults
    from trainer.train import train as run_training

    cfg = _checked(
        lambda: TrainConfig(
            base_model=base_model,
            data=data,
            output=output,
            method=method,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            learning_rate=lr,
            scheduler=scheduler,
            warmup_ratio=warmup_ratio,
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            max_seq_len=max_seq_len,
            gradient_checkpointing=gradient_checkpointing,
            optimizer=optimizer,
            seed=seed,
            eval_fraction=eval_fraction,
            beta=beta,
            logging_steps=logging_steps,
            name=name,
            sampling_defaults=_given(
                temperature=default_temperature,
                top_p=default_top_p,
                top_k=default_top_k,
                min_p=default_min_p,
                max_tokens=default_max_tokens,
                stop=default_stop,
                frequency_penalty=default_frequency_penalty,
                presence_penalty=default_presence_penalty,
                repetition_penalty=default_repetition_penalty,
            ),
        )
    )
    if register and cfg.method is Method.DORA:
        _fail(
            "vLLM does not serve DoRA adapters: train without --register, then "
            "`lora-trainer merge` and serve the merged model"
        )
    configure_offline_defaults()
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    adapter = _checked(lambda: run_training(cfg, progress=not quiet, overwrite=overwrite))

    manifest = json.loads((adapter / MANIFEST).read_text())
    figures, evals = manifest["train"], manifest["eval"]
    console.print(
        f"[green]adapter[/] {adapter}  steps {figures['steps']}  "
        f"eval loss {_num(evals['loss_before'])} -> {_num(evals['loss_after'])}  "
        f"{figures['tokens_per_s']:.0f} tokens/s  {figures['wall_time_s']:.1f} s"
    )
    if register:
        _register(register, cfg.adapter_name, adapter, admin_token)


@app.command("eval")
def evaluate_command(
    adapter: Annotated[Path, typer.Argument(help="Adapter directory.")],
    base_model: Annotated[Path | None, typer.Option(help="(default: from adapter)")] = None,
    data: Annotated[Path | None, typer.Option(help="(default: held-out rows of training)")] = None,
    samples: int = 3,
    max_new_tokens: int = 48,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Held-out loss and perplexity, base vs adapter, and sample answers side by side."""
    from trainer.evaluate import evaluate
    from trainer.train import configure_offline_defaults

    configure_offline_defaults()
    report = _checked(
        lambda: evaluate(
            adapter,
            base_model=base_model,
            data=data,
            samples=samples,
            max_new_tokens=max_new_tokens,
        )
    )
    if as_json:
        payload = {
            "adapter": str(report.adapter),
            "base_model": str(report.base_model),
            "data": str(report.data),
            "held_out": report.held_out,
            "rows": report.rows,
            "completion_tokens": report.completion_tokens,
            "base": {"loss": report.base_loss, "perplexity": report.base_perplexity},
            "adapter_scores": {
                "loss": report.adapter_loss,
                "perplexity": report.adapter_perplexity,
            },
            "samples": [sample.__dict__ for sample in report.samples],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    out = Console()
    scope = "held-out" if report.held_out else "all"
    scores = Table(
        title=f"{report.rows} {scope} rows, {report.completion_tokens} completion tokens"
    )
    for column in ("", "loss", "perplexity"):
        scores.add_column(column)
    scores.add_row("base", f"{report.base_loss:.4f}", f"{report.base_perplexity:.2f}")
    scores.add_row("adapter", f"{report.adapter_loss:.4f}", f"{report.adapter_perplexity:.2f}")
    out.print(scores)
    if report.samples:
        side = Table(title="greedy answers", show_lines=True)
        for column in ("prompt", "reference", "base", "adapter"):
            side.add_column(column, overflow="fold")
        for sample in report.samples:
            side.add_row(sample.prompt, sample.reference, sample.base, sample.adapter)
        out.print(side)


@app.command()
def merge(
    adapter: Annotated[Path, typer.Argument(help="Adapter directory.")],
    output: Annotated[Path, typer.Option(help="Model directory to write.")],
    base_model: Annotated[Path | None, typer.Option(help="(default: from adapter)")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    overwrite: bool = False,
) -> None:
    """Fold the adapter into its base: a model directory served without LoRA."""
    from trainer.merge import merge as run_merge
    from trainer.train import configure_offline_defaults

    if dtype not in ("float32", "bfloat16", "float16"):
        _fail(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    configure_offline_defaults()
    merged = _checked(
        lambda: run_merge(
            adapter,
            output,
            base_model=base_model,
            dtype=dtype,  # type: ignore[arg-type]
            overwrite=overwrite,
        )
    )
    console.print(f"[green]merged model[/] {merged}")


@app.command("combine")
def combine_command(
    adapters: Annotated[list[Path], typer.Argument(help="Adapter directories, 2 to 8.")],
    output: Annotated[Path, typer.Option(help="Adapter directory to write.")],
    weights: Annotated[str, typer.Option(help="One weight per adapter, e.g. 0.7,0.3.")],
    method: Annotated[
        str, typer.Option(help="linear, cat (rank = sum), svd (PEFT's default), ties, dare_linear.")
    ] = "svd",
    svd_rank: Annotated[int | None, typer.Option(help="svd: the rank (default: largest).")] = None,
    density: Annotated[
        float | None, typer.Option(help="ties, dare_linear: share of values kept (default 0.5).")
    ] = None,
    seed: Annotated[int, typer.Option(help="dare_linear: seed of the random drop.")] = 0,
    max_rank: Annotated[
        int, typer.Option(help="The engine's --max-lora-rank: refuse a larger result.")
    ] = 512,
    base_model: Annotated[Path | None, typer.Option(help="(default: from the adapters)")] = None,
    name: Annotated[str | None, typer.Option(help="Adapter name (default: output dir).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --output.")] = False,
    register: Annotated[
        str | None, typer.Option(help="Gateway URL: register the combined adapter.")
    ] = None,
    admin_token: Annotated[
        str | None, typer.Option(envvar="LORA_GATEWAY_ADMIN_TOKEN", show_envvar=True)
    ] = None,
) -> None:
    """Combine adapters of one base model with PEFT's add_weighted_adapter."""
    from trainer.combine import combine_planned, plan_combine
    from trainer.train import configure_offline_defaults

    try:
        parsed = [float(part) for part in weights.split(",")]
    except ValueError:
        _fail(f"--weights must be numbers separated by commas, got {weights[:100]!r}")
    plan = _checked(
        lambda: plan_combine(
            adapters,
            parsed,
            method,
            output=output,
            base_model=base_model,
            name=name,
            svd_rank=svd_rank,
            density=density,
            seed=seed,
            max_rank=max_rank,
            overwrite=overwrite,
        )
    )
    configure_offline_defaults()
    combined = _checked(lambda: combine_planned(plan))
    parents = ", ".join(
        f"{p.name} x {w:g}" for p, w in zip(plan.parents, plan.weights, strict=True)
    )
    console.print(
        f"[green]combined adapter[/] {combined}  {plan.method} of {parents}, rank {plan.rank}"
    )
    if register:
        _register(register, plan.name, combined, admin_token)


@app.command("register")
def register_command(
    adapter: Annotated[Path, typer.Argument(help="Adapter directory.")],
    url: Annotated[str, typer.Option(help="Gateway URL, e.g. http://127.0.0.1:8000.")],
    name: Annotated[str | None, typer.Option(help="(default: adapter dir name)")] = None,
    admin_token: Annotated[
        str | None, typer.Option(envvar="LORA_GATEWAY_ADMIN_TOKEN", show_envvar=True)
    ] = None,
) -> None:
    """Register an adapter directory with a running gateway (admin API)."""
    _register(url, name or adapter.resolve().name, adapter, admin_token)


def _register(url: str, name: str, adapter: Path, token: str | None) -> None:
    try:
        answer = register_adapter(url, name, adapter, token=token)
    except AdapterError as exc:
        console.print(f"[red]registration failed:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"[green]registered[/] {name!r} at {url}: {json.dumps(answer)[:500]}")


def _checked(step: Callable[[], T]) -> T:
    """Run ``step``; a bad value of the user's becomes one red line and exit status 2."""
    try:
        return step()
    except (ConfigError, DataError, ModelLoadError) as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _given(**values: object) -> dict[str, object]:
    """The sampling defaults the user passed (flags left unset are not defaults)."""
    return {key: value for key, value in values.items() if value is not None and value != []}


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main() -> None:
    app()
