"""The ``quanta`` command line (typer + rich)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from quanta._version import __version__
from quanta.errors import QuantaError

app = typer.Typer(
    name="quanta",
    help="Quantization for neural networks, signals and data: smaller, faster, and measured.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"quanta {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool],  # noqa: UP045 - typer reads this annotation at runtime on Python 3.10
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """quanta: quantize tensors and models, and see what it costs."""


def _numbers_table(title: str, label: str, columns: tuple[str, ...]) -> Table:
    """A table with one text column and right-aligned number columns that never wrap."""
    table = Table(title=title)
    table.add_column(label, no_wrap=True)
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True)
    return table


def _fail(exc: QuantaError) -> None:
    console.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(code=2)


@app.command()
def formats() -> None:
    """List every registered value format with examples."""
    from quanta.formats import families

    table = Table(title="quanta formats")
    table.add_column("examples")
    table.add_column("what")
    for family in families():
        table.add_row(", ".join(family.examples), family.summary)
    console.print(table)
    console.print("Combine a format with a granularity and options, e.g. int4:g128:asym (see docs/schemes.md).")


@app.command()
def recipes() -> None:
    """Explain the preset grammar and list the named presets."""
    from quanta.api import METHODS
    from quanta.recipe import PRESET_GRAMMAR, SPECIAL_PRESETS, preset

    console.print(f"Presets follow [bold]{escape(PRESET_GRAMMAR)}[/]:")
    console.print("  W weight bits: per output channel, or groups of N along the reduction dim with -gN")
    console.print("  A activation bits: 16 = weights only; otherwise static per-tensor, or per-token with -dyn")
    console.print(f"  method: {', '.join(METHODS)} (default rtn); +kv8/+kv4: KV-cache bits for language models")
    console.print("  Every preset keeps embeddings and lm_head in float.")
    table = Table(title="examples and named presets")
    for col in ("preset", "weights", "activations", "what"):
        table.add_column(col)
    examples = {
        "w8a16": "int8 weights per channel, float activations",
        "w4a16-g128": "int4 weights in groups of 128, fp16 scales and int zero points",
        "w8a8": "int8 weights and static int8 activations (not implemented yet)",
    }
    for name, what in [*examples.items(), *((n, d) for n, (_, d) in SPECIAL_PRESETS.items())]:
        main = preset(name).rules[-1]
        table.add_row(name, str(main.weight), "float" if main.activation is None else str(main.activation), what)
    console.print(table)


@app.command()
def inspect(
    directory: Annotated[Path, typer.Argument(help="A directory written by quanta.save.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
) -> None:
    """Show the per-module schemes, kernels and bytes of a saved quantized model."""
    import json

    from quanta.checkpoint import CONFIG_FILE

    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
        modules = dict(config["modules"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(path))} is not a readable quanta.json ({escape(str(exc))}).")
        raise typer.Exit(code=2) from exc
    if as_json:
        typer.echo(json.dumps(config, indent=2, sort_keys=True))
        return
    recipe = (config.get("recipe") or {}).get("name", "?")
    table = Table(title=f"{directory} (recipe {recipe}, {config.get('model_nbytes', 0):,} bytes in all)")
    for col in ("module", "class", "weight", "input", "kernel", "weight bytes"):
        table.add_column(col, justify="right" if col == "weight bytes" else "left")
    for name, entry in modules.items():
        act = entry.get("activation") or "float"
        if entry.get("activation") and entry.get("dynamic"):
            act += " (per token)"
        table.add_row(
            name,
            entry.get("class", "?"),
            entry.get("scheme", "?"),
            act,
            entry.get("kernel", "?"),
            f"{entry.get('nbytes', 0):,}",
        )
    console.print(table)


@app.command()
def scheme(text: Annotated[str, typer.Argument(help="A scheme string such as int4:g128:asym.")]) -> None:
    """Parse a scheme string and explain it."""
    from quanta.scheme import QScheme

    try:
        s = QScheme.parse(text)
    except QuantaError as exc:
        _fail(exc)
        return
    fmt = s.fmt
    console.print(f"canonical: [bold]{s}[/]")
    console.print(f"format:    {fmt.name} - {fmt.summary} ({fmt.bits} bit{'s' if fmt.bits > 1 else ''} per code)")
    grain = {
        "tensor": "one group: the whole tensor",
        "channel": "one group per output channel, along the reduction dimension",
        "group": f"groups of {s.group_size} along the reduction dimension",
    }
    console.print(f"grouping:  {grain[s.granularity]}")
    spec = fmt.param_spec(s)
    dtype_note = f"; parameters stored as {s.scale_dtype}" if spec else ""
    console.print(f"mode:      {s.mode}{', narrow range' if s.narrow else ''}{dtype_note}")
    console.print(f"rounding:  {'round half to even' if s.rounding == 'rne' else 'stochastic'}")
    stored = ", ".join(f"{k} {str(d).removeprefix('torch.')}{list(t) if t else ''}" for k, (t, d) in spec.items())
    console.print(f"stores:    packed codes{' + per group: ' + stored if stored else ' only (fixed grid)'}")


@app.command()
def demo(
    retrain: Annotated[bool, typer.Option(help="Retrain the demo model even if a cached one exists.")] = False,
    cache_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Where the trained demo model is cached (default: $QUANTA_CACHE, else $XDG_CACHE_HOME/quanta, "
            "else ~/.cache/quanta)."
        ),
    ] = None,
) -> None:
    """Train a small CNN on scikit-learn's digits (cached) and quantize its weights with every format."""
    from quanta.demo import default_cache_dir, load_or_train, run_demo, run_presets

    start = time.perf_counter()
    try:
        with console.status("loading or training the digits CNN..."):
            model, path, trained = load_or_train(cache_dir or default_cache_dir(), retrain)
    except QuantaError as exc:
        _fail(exc)
        return
    console.print(f"{'trained and cached' if trained else 'loaded cached'} digits CNN: {path}")
    with console.status("quantizing with every format..."):
        baseline, rows = run_demo(model)
    table = _numbers_table(
        "Digits CNN: every conv/linear weight quantized, 360 test images",
        "scheme",
        ("bits/w", "SQNR dB", "bytes", "ratio", "accuracy", "change"),
    )
    table.add_row(baseline.scheme, "32.00", "inf", f"{baseline.nbytes:,}", "1.0x", f"{baseline.accuracy:.2%}", "")
    for r in rows:
        table.add_row(
            r.scheme,
            f"{r.bits_per_weight:.2f}",
            f"{r.sqnr_db:.1f}",
            f"{r.nbytes:,}",
            f"{baseline.nbytes / r.nbytes:.1f}x",
            f"{r.accuracy:.2%}",
            f"{100 * (r.accuracy - baseline.accuracy):+.1f} pt",
        )
    console.print(table)
    console.print(
        "bits/weight counts codes plus scales, zero points and codebooks; accuracy uses the dequantized weights."
    )
    with console.status("quantizing the whole model with presets..."):
        base, preset_rows = run_presets(model)
    presets = _numbers_table(
        "Whole-model presets (quanta.quantize; w8a8 calibrated on the training images)",
        "recipe",
        ("accuracy", "change", "bytes", "ratio", "latency ms", "speedup"),
    )
    presets.add_row("float", f"{base.accuracy:.2%}", "", f"{base.nbytes:,}", "1.0x", f"{base.latency_ms:.2f}", "1.00x")
    for p in preset_rows:
        presets.add_row(
            p.recipe,
            f"{p.accuracy:.2%}",
            f"{100 * (p.accuracy - base.accuracy):+.1f} pt",
            f"{p.nbytes:,}",
            f"{base.nbytes / p.nbytes:.1f}x",
            f"{p.latency_ms:.2f}",
            f"{base.latency_ms / p.latency_ms:.2f}x",
        )
    console.print(presets)
    console.print(
        "bytes = quanta.model_nbytes (weights, biases, scales); latency: 360 images, fp32, reference path. "
        f"Done in {time.perf_counter() - start:.1f} s; nothing written besides the cache."
    )


if __name__ == "__main__":
    app()
