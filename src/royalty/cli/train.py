"""``royalty train CONFIG.yaml [section.field=value ...]``: fine-tune a LoRA adapter on datanet versions.

Every problem in the config (and every bad row in the data) is reported at once before any work starts.
``--preview`` shows examples token by token with the trained tokens marked, and trains nothing. Ctrl-C saves
a checkpoint; ``--resume`` continues it. ``--continue-from ADAPTER`` starts a new run from an adapter's weights
(more epochs, new data) whose lineage points at it. ``--attribution-index`` records the adapter's attribution
index during the run (what ``royalty attribution index build`` otherwise gets by replaying it). The same run as a
background job: ``royalty jobs submit train CONFIG.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InvalidInput
from ._common import HomeOption, JsonOption, emit, node_at, table

EXIT_INTERRUPTED = 130  # the shell's code for "stopped by Ctrl-C": the run is saved, not failed


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        config: Annotated[Path | None, typer.Argument(metavar="CONFIG.yaml", help="The TrainConfig file.", show_default=False)] = None,
        overrides: Annotated[list[str] | None, typer.Argument(metavar="[KEY=VALUE]...",
                             help="Overrides, e.g. train.epochs=5 lora.r=16.", show_default=False)] = None,
        preview: Annotated[bool, typer.Option("--preview", help="Show examples token by token (trained tokens marked); train nothing.")] = False,
        examples: Annotated[int, typer.Option("--examples", min=1, help="How many examples --preview shows.")] = 3,
        resume: Annotated[bool, typer.Option("--resume", help="Continue this config's interrupted run from its last checkpoint.")] = False,
        continue_from: Annotated[str | None, typer.Option(
            "--continue-from", metavar="ADAPTER", help="Start from this adapter's weights (name or name@N), as a new run.",
            show_default=False)] = None,
        owner: Annotated[str | None, typer.Option(
            "--owner", help="The account that owns the adapter and pays its registration fee. Default: the operator.",
            show_default=False)] = None,
        attribution_index: Annotated[bool, typer.Option(
            "--attribution-index", help="Record the adapter's attribution index while it trains (no replay later; "
            "for runs that cannot be replayed exactly, e.g. on a GPU).")] = False,
        index_dim: Annotated[int, typer.Option("--index-dim", min=1, help="Row size of that index (projected).")] = 1024,
        explain: Annotated[bool, typer.Option("--explain", help="List every config field with its type, default and meaning.")] = False,
        example: Annotated[bool, typer.Option("--example", help="Print a commented example config.")] = False,
        home: HomeOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Fine-tune a LoRA adapter on datanet versions and register it on the node."""
        from ..factory.config import EXAMPLE_CONFIG, config_reference, load_config

        if example:
            typer.echo(EXAMPLE_CONFIG.rstrip("\n"))
            return
        if explain:
            ref = config_reference()
            emit(as_json, ref, lambda: typer.echo(table(
                [[f["field"], f["type"], _short(f["default"]), f["help"]] for f in ref], ["FIELD", "TYPE", "DEFAULT", "MEANING"])))
            return
        if config is None:
            raise InvalidInput("give a config file: royalty train CONFIG.yaml (start from: royalty train --example)",
                               field="config")
        cfg = load_config(config, overrides or [])
        with node_at(home) as node:
            if preview:
                text = node.factory.preview(cfg, examples)
                emit(as_json, {"preview": text}, text)
                return
            result = node.factory.train(
                cfg, actor=owner or node.operator(), resume=resume, parent=continue_from, progress=not as_json,
                attribution_dim=index_dim if attribution_index else None)
            again = [str(config), *(overrides or [])]
            again += ["--owner", owner] if owner else []
            again += ["--continue-from", continue_from] if continue_from else []
            emit(as_json, result.to_dict(), lambda: _summary(result, again))
            if result.interrupted:
                raise typer.Exit(EXIT_INTERRUPTED)


def _short(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _summary(result: Any, args: list[str]) -> None:
    run = result.run
    if result.interrupted:
        again = " ".join(["royalty train", *args, "--resume"])
        typer.echo(f"interrupted at step {run.steps}; checkpoint saved in {run.out_dir}\nresume with: {again}")
        return
    typer.echo(f"trained {run.steps} steps on {run.tokens} tokens in {run.seconds:.1f} s, train loss {run.train_loss:.4f}")
    ev = result.evaluation
    if ev:
        typer.echo(
            f"held-out ({ev['examples']} examples): loss {ev['base_loss']:.4f} → {ev['loss']:.4f}, "
            f"perplexity {ev['base_perplexity']:.2f} → {ev['perplexity']:.2f} (base → adapter)")
    a = result.adapter
    typer.echo(f"adapter {a.name}@{a.version} ({a.id}) registered; files in {a.path}")
    typer.echo(f"run directory: {run.out_dir}")
    if (index := result.attribution_index) is not None:
        typer.echo(f"attribution index recorded during training: {index['rows']} rows of {index['dim']} "
                   f"(royalty attribute {a.name}@{a.version} ...)")
