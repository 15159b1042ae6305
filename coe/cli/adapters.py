"""`coe adapters data|train`: build a skill dataset, train a LoRA adapter on an embedded expert."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coe.adapters.data import (
    SKILLS,
    arithmetic_examples,
    letter_answer_examples,
    read_examples,
    write_examples,
)
from coe.adapters.train import TRAINING_RECORD, TrainConfig, build_adapter
from coe.cli.common import load_pool, out, progress, settings
from coe.datasets import load_mmlu_pro
from coe.errors import UnknownNameError

app = typer.Typer(help="LoRA adapters as experts: skill data, training with peft, GGUF for llama.cpp.")

DEFAULTS = TrainConfig()


@app.command("data")
def data(
    skill: Annotated[str, typer.Argument(help=f"One of: {', '.join(SKILLS)}.")],
    output: Annotated[Path, typer.Option("--out", help="JSON Lines file to write.")],
    n: Annotated[int, typer.Option(help="arithmetic: number of problems.")] = 400,
    seed: Annotated[int, typer.Option(help="arithmetic: generator seed.")] = 0,
) -> None:
    """Write a skill's training examples ({"prompt", "response"} lines)."""
    if skill == "arithmetic":
        examples = arithmetic_examples(n, seed)
    elif skill == "mmlu-pro-letter":
        examples = letter_answer_examples(load_mmlu_pro("validation", settings().data_dir))
    else:
        raise UnknownNameError("skill", skill, SKILLS)
    out.print(f"wrote {write_examples(output, examples)} {skill} examples to {output}")


@app.command("train")
def train(
    base: Annotated[str, typer.Option("--base", help="Id of the embedded expert to adapt.")],
    data_file: Annotated[Path, typer.Option("--data", help="JSON Lines of {prompt, response} (see `data`).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the adapter (PEFT files and adapter.gguf).")],
    pool: Annotated[Path | None, typer.Option("--pool", help="Registry file holding the base expert.")] = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = DEFAULTS.steps,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = DEFAULTS.batch_size,
    learning_rate: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = DEFAULTS.learning_rate,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = DEFAULTS.rank,
    alpha: Annotated[float, typer.Option(help="LoRA alpha (scale = alpha / rank).")] = DEFAULTS.alpha,
    targets: Annotated[str, typer.Option(help="Comma-separated modules to adapt.")] = ",".join(DEFAULTS.targets),
    max_tokens: Annotated[int, typer.Option(help="Skip examples longer than this.")] = DEFAULTS.max_tokens,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and batch order.")] = DEFAULTS.seed,
) -> None:
    """Train a LoRA adapter on an embedded expert and write it for llama.cpp (and vLLM)."""
    current = settings()
    expert = load_pool(pool)[base]
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        rank=rank,
        alpha=alpha,
        targets=tuple(t.strip() for t in targets.split(",") if t.strip()),
        max_tokens=max_tokens,
        seed=seed,
        threads=current.threads,
    )
    examples = read_examples(data_file)
    with progress(f"training {out_dir.name} on {expert.id}", total=steps) as advance:
        report = build_adapter(
            expert, examples, out_dir, config, cache_dir=current.cache_dir, on_step=lambda step, loss: advance(1)
        )
    out.print(
        f"trained {out_dir} on {expert.id}: {report.n_examples} examples ({report.n_skipped} skipped), "
        f"{report.steps} steps in {report.seconds:.0f} s, loss {report.losses[0]:.3f} -> {report.final_loss:.3f}, "
        f"{report.n_trainable:,} LoRA parameters, adapter.gguf {report.adapter_bytes / 1e6:.2f} MB; "
        f"record in {out_dir / TRAINING_RECORD}"
    )
