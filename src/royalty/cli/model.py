"""``royalty model …``: build a tiny local base model, pretrain it, and show what a base model is.

``init-tiny`` and ``pretrain`` read their corpus from a FILE (.txt paragraphs or .jsonl records), a datanet version
``slug@N`` (this opens the node at --home) or, by default, the built-in English corpus. torch and transformers
are imported only when a command runs, so the rest of the CLI stays fast.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..factory import basemodel
from ._common import HomeOption, JsonOption, emit, node_at

app = typer.Typer(help="Base models: build a tiny local model, pretrain it, inspect one.", no_args_is_help=True)

DirArg = Annotated[Path, typer.Argument(metavar="DIR", help="The model's folder (Hugging Face format).")]
CorpusOption = Annotated[
    str | None,
    typer.Option(
        "--corpus",
        help="Text to learn from: a datanet version (slug@N), a .txt file (paragraphs) or a .jsonl file. "
             "Default: the built-in English corpus.",
        show_default=False,
    ),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed.")]
TINY = basemodel.TinySpec()  # the defaults of init-tiny's options
MIN_VOCAB = 256 + len(basemodel.SPECIAL_TOKENS)  # every byte, plus the special tokens


@app.command("init-tiny")
def init_tiny(
    directory: DirArg,
    corpus: CorpusOption = None,
    vocab_size: Annotated[
        int, typer.Option("--vocab-size", help="Largest vocabulary the tokenizer may learn.", min=MIN_VOCAB)
    ] = TINY.vocab_size,
    hidden_size: Annotated[
        int, typer.Option("--hidden-size", help="Width of the model (a multiple of 8).", min=8)
    ] = TINY.hidden_size,
    layers: Annotated[int, typer.Option("--layers", help="Number of transformer layers.", min=1)] = TINY.num_layers,
    seed: SeedOption = 0,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build a small random Llama model and a byte-level BPE tokenizer trained on the corpus, in DIR."""
    spec = basemodel.TinySpec(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=layers,
        # The usual Llama ratio: the MLP is ~8/3 the width, rounded up to a multiple of 8.
        intermediate_size=math.ceil(hidden_size * 8 / 3 / 8) * 8,
    )
    texts = _corpus(corpus, home)
    _quiet_transformers()
    ident = basemodel.init_tiny(directory, texts, spec=spec, seed=seed)
    emit(as_json, {"dir": str(directory), "identity": ident.to_dict()},
         f"built {ident.architecture} with {ident.num_parameters:,} parameters in {directory}\n"
         f"weights {ident.weights_sha256}\n"
         f"next: royalty model pretrain {directory} --minutes 5")


@app.command("pretrain")
def pretrain(
    directory: DirArg,
    minutes: Annotated[float, typer.Option("--minutes", help="Wall-clock training budget in minutes.", min=0.01)],
    corpus: CorpusOption = None,
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", help="Stop after this many steps even if time is left.", min=1, show_default=False),
    ] = None,
    seed: SeedOption = 0,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train every weight of the model in DIR on the corpus for --minutes, and save it back into DIR."""
    texts = _corpus(corpus, home)
    _quiet_transformers()
    from tqdm import tqdm

    # disable=None: a bar only when stderr is a terminal, so pipes and logs stay clean.
    with tqdm(total=100, unit="%", desc="pretraining", file=sys.stderr, disable=None, leave=False,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}") as bar:

        def progress(p: dict[str, Any]) -> None:
            bar.n = round(100 * p["fraction"], 1)
            speed = p["tokens"] / max(p["seconds"], 1e-9)
            bar.set_postfix_str(f"step {p['step']} loss {p['loss']:.3f} {speed:,.0f} tok/s", refresh=False)
            bar.refresh()

        stats = basemodel.pretrain(directory, texts, minutes=minutes, max_steps=max_steps, seed=seed, progress=progress)
    loss = stats["loss"]
    emit(as_json, {"dir": str(directory), **stats},
         f"pretrained {directory}: {stats['steps']} steps, {stats['tokens']:,} tokens in {stats['seconds']:.0f}s\n"
         f"loss {loss['first']:.3f} -> {loss['final_mean']:.3f}\n"
         f"weights {stats['weights_sha256']}")


@app.command("info")
def info(directory: DirArg, as_json: JsonOption = False) -> None:
    """Show a base model's identity (architecture, parameters, weights hash), shape, tokenizer and pretraining."""
    data = basemodel.describe(str(directory))
    emit(as_json, data, lambda: typer.echo(_info_text(data)))


def _info_text(data: dict[str, Any]) -> str:
    ident, shape, tok = data["identity"], data["config"], data["tokenizer"]
    lines = [
        f"{ident['name']}",
        f"architecture  {ident['architecture']} ({shape['model_type']})",
        f"parameters    {ident['num_parameters']:,}",
        f"weights       {ident['weights_sha256']}",
        (f"shape         {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
         f"{shape['num_attention_heads']} heads, {shape['max_position_embeddings']} positions"),
        (f"vocabulary    {tok['vocab_size']} tokens; bos {tok['bos_token']} eos {tok['eos_token']} "
         f"pad {tok['pad_token']}"),
        f"chat template {'yes' if tok['chat_template'] else 'no'}",
    ]
    runs = data["pretrain"]
    if runs:
        steps = sum(r["steps"] for r in runs)
        lines.append(f"pretrained    {len(runs)} run(s), {steps} steps, last loss {runs[-1]['loss']['final_mean']:.3f}")
    return "\n".join(lines)


def _corpus(spec: str | None, home: Path | None) -> list[str]:
    """The corpus texts; the node is opened only for a datanet version (slug@N that is not an existing file)."""
    if spec is not None and "@" in spec and not Path(spec).expanduser().exists():
        with node_at(home) as node:
            return basemodel.corpus_texts(node, spec)
    return basemodel.corpus_texts(None, spec)


def _quiet_transformers() -> None:
    """transformers draws its own bars ("Loading weights", "Writing model shards"); ours is the one to read."""
    from transformers.utils import logging

    logging.disable_progress_bar()
