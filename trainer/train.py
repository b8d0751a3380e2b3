"""train(cfg) -> adapter directory: one training run, read top to bottom.

    lora-trainer train --base-model MODEL_DIR --data rows.jsonl --output adapters/my-lora
    lora-trainer train ... --method qlora --rank 16 --target-modules all-linear --max-steps 200

Called by ``lora-trainer train`` (:mod:`trainer.cli`) and by tests. The story:

1. load and validate the data (:mod:`trainer.data`), split off a held-out eval set;
2. load the base model on the detected device, bf16 on CUDA and float32 on CPU; for ``qlora``
   4-bit NF4 + double quantization, ``prepare_model_for_kbit_training``, and bitsandbytes'
   CPU inference repacking turned off (it would cut the gradient path, see below);
3. build TRL's SFTTrainer (DPOTrainer for ``dpo``) with a PEFT LoraConfig (``use_dora`` for
   ``dora``), the loss on the completion only;
4. on CPU, cast the trainable LoRA weights TRL made bf16 for 4-bit models back to float32;
5. eval loss before, train (tqdm bar with the loss), eval loss after;
6. save the PEFT adapter and ``manifest.json`` into a staging directory beside ``cfg.output``,
   then swap it in (:mod:`trainer.output`: a registry never sees half an adapter, a crash
   leaves the old or the new one whole, nothing is written or deleted through a symlink).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, Method, TrainConfig, check_target_modules
from trainer.data import TrainingData, load_training_data
from trainer.manifest import RunFigures, build_manifest, write_manifest
from trainer.models import (
    Device,
    check_model_dir,
    compute_dtype,
    detect_device,
    linear_module_names,
    load_base_model,
    load_tokenizer,
)
from trainer.output import checked_output, publish

log = logging.getLogger("trainer")


def train(cfg: TrainConfig, *, progress: bool = True, overwrite: bool = False) -> Path:
    """Train one adapter as ``cfg`` says; return its directory (``cfg.output``, absolute)."""
    started = time.perf_counter()
    base_path = check_model_dir(cfg.base_model)
    output = checked_output(cfg.output, overwrite=overwrite)

    data = load_training_data(cfg.data)
    _check_method_fits_data(cfg.method, data)
    train_rows, eval_rows = data.split(cfg.eval_fraction, cfg.seed)
    log.info("data: %s, %d train / %d eval rows", data.format, len(train_rows), len(eval_rows))

    device = detect_device()
    tokenizer = load_tokenizer(base_path)
    model = load_base_model(base_path, device, quantize_4bit=cfg.method is Method.QLORA)
    check_target_modules(cfg.peft_target_modules, linear_module_names(model))
    if cfg.method is Method.QLORA:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing
        )
        _keep_4bit_layers_differentiable(model)

    with tempfile.TemporaryDirectory(prefix="lora-trainer-") as scratch:
        trainer = _build_trainer(
            cfg, device, model, tokenizer, train_rows, eval_rows, scratch, progress
        )
        if device == "cpu":
            _trainable_to_float32(trainer.model)
        if progress:
            _show_loss_on_progress_bar(trainer)

        loss_before = _eval_loss(trainer, eval_rows)
        result = trainer.train()
        loss_after = _eval_loss(trainer, eval_rows)
        log.info("eval loss %s -> %s", loss_before, loss_after)

    figures = RunFigures(
        device=device,
        steps=trainer.state.global_step,
        train_loss=result.training_loss,
        eval_loss_before=loss_before,
        eval_loss_after=loss_after,
        train_runtime_s=float(result.metrics.get("train_runtime", 0.0)),
        tokens_seen=int(trainer.state.num_input_tokens_seen or 0),
        wall_time_s=time.perf_counter() - started,
        trainable_parameters=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        compute_dtype=str(compute_dtype(device)).removeprefix("torch."),
        quantization=_quantization(model),
    )
    manifest = build_manifest(
        config=_resolved_config(cfg, trainer.model),
        data=_data_summary(data, train_rows, eval_rows),
        base_model=base_path,
        figures=figures,
    )
    return _save(trainer.model, manifest, output)


# --- steps ---------------------------------------------------------------------------------------


def _save(model: Any, manifest: dict[str, Any], output: Path) -> Path:
    """PEFT files + manifest.json, put in place whole at ``output`` by :func:`publish`."""

    def write(staging: Path) -> None:
        model.save_pretrained(str(staging))
        write_manifest(staging, manifest)

    return publish(output, write)


def _resolved_config(cfg: TrainConfig, peft_model: Any) -> dict[str, Any]:
    config = cfg.resolved()
    targets = peft_model.peft_config["default"].target_modules
    config["target_modules_resolved"] = sorted({name.rsplit(".", 1)[-1] for name in targets})
    return config


def _data_summary(
    data: TrainingData, train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "path": str(data.path.resolve()),
        "sha256": data.sha256,
        "format": data.format.value,
        "rows": len(data.rows),
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
    }


def _check_method_fits_data(method: Method, data: TrainingData) -> None:
    if method is Method.DPO and not data.is_preference:
        raise ConfigError(
            f"method dpo needs prompt/chosen/rejected rows, {data.path} has {data.format} rows"
        )
    if method is not Method.DPO and data.is_preference:
        raise ConfigError(
            f"{data.path} has preference rows (prompt/chosen/rejected): use --method dpo, "
            f"not {method}"
        )


def _build_trainer(
    cfg: TrainConfig,
    device: Device,
    model: Any,
    tokenizer: Any,
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    scratch: str,
    progress: bool,
) -> Any:
    from datasets import Dataset
    from peft import LoraConfig

    assert cfg.alpha is not None and cfg.optimizer is not None  # resolved in __post_init__
    peft_config = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.peft_target_modules,
        use_dora=cfg.method is Method.DORA,
        bias="none",
        task_type="CAUSAL_LM",
    )
    args: dict[str, Any] = {
        "output_dir": scratch,  # checkpoints are off; the adapter is saved by train()
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": cfg.scheduler.value,
        "warmup_steps": cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps or -1,
        "max_length": cfg.max_seq_len,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "optim": cfg.optimizer.value,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "bf16": device == "cuda",
        "use_cpu": device == "cpu",
        "logging_steps": cfg.logging_steps,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "disable_tqdm": not progress,
    }
    train_set = Dataset.from_list(train_rows)
    eval_set = Dataset.from_list(eval_rows) if eval_rows else None
    if cfg.method is Method.DPO:
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer(
            model=model,
            args=DPOConfig(**args, beta=cfg.beta),
            train_dataset=train_set,
            eval_dataset=eval_set,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    from trl import SFTConfig, SFTTrainer

    return SFTTrainer(
        model=model,
        args=SFTConfig(**args, completion_only_loss=True, packing=False),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def _keep_4bit_layers_differentiable(model: Any) -> None:
    """Stop bitsandbytes repacking 4-bit weights for inference on AVX512-BF16 CPUs.

    In eval mode (our eval loss before training) bitsandbytes 0.50 converts each Linear4bit
    weight, for good, to a CPU layout served by ``gemv_4bit``, which has no backward: training
    afterwards gets no gradient through the frozen layers, and the LoRA weights of all but the
    last layers barely learn. The repacking only speeds up inference; turn it off.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _trainable_to_float32(model: Any) -> None:
    """Undo TRL's bf16 cast of LoRA weights on 4-bit models: bf16 math is slow on this CPU."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)


def _show_loss_on_progress_bar(trainer: Any) -> None:
    from transformers.trainer_callback import ProgressCallback

    class LossProgressCallback(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}")
            super().on_log(args, state, control, logs=logs, **kw)

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LossProgressCallback())


def _quantization(model: Any) -> dict[str, Any] | None:
    config = getattr(model, "quantization_config", None) or getattr(
        getattr(model, "config", None), "quantization_config", None
    )
    if config is None:
        return None
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    keep = ("quant_method", "load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant")
    out = {key: as_dict.get(key) for key in keep}
    out["bnb_4bit_compute_dtype"] = str(as_dict.get("bnb_4bit_compute_dtype"))
    return out


def _eval_loss(trainer: Any, eval_rows: list[dict[str, Any]]) -> float | None:
    if not eval_rows:
        return None
    return float(trainer.evaluate()["eval_loss"])


def configure_offline_defaults() -> None:
    """No model hub is reachable here: never try one (callers may still override)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
