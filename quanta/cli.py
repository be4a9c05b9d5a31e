"""The ``quanta`` command line (typer + rich).

Every command takes ``--json`` (machine-readable output on stdout, nothing else there), ``--quiet`` (no progress
bars, spinners or notes) and ``--seed`` (seeds ``random``, numpy and torch). Failures print one line,
``error: <what is wrong and what to do>``, on stderr and exit with status 2. Progress bars and spinners go to
stderr, so stdout holds only results.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
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
console = Console()  # results: stdout
progress_console = Console(stderr=True)  # progress bars and spinners: stderr

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, spinners or notes.")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Seed random, numpy and torch for a reproducible run.")]


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


class _Out:
    """One command's output settings: JSON or tables, quiet or chatty; seeds the RNGs on creation."""

    def __init__(self, as_json: bool, quiet: bool, seed: int) -> None:
        import numpy as np
        import torch

        self.as_json, self.quiet, self.seed = as_json, quiet or as_json, seed
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def print(self, *items: Any) -> None:
        """A result (table or line): shown unless --json."""
        if not self.as_json:
            console.print(*items, soft_wrap=all(isinstance(i, str) for i in items))  # lines: never break paths

    def note(self, text: str) -> None:
        """An explanation or progress line: shown unless --quiet or --json."""
        if not self.quiet:
            console.print(text, soft_wrap=True)

    def json(self, data: Any) -> None:
        if self.as_json:
            typer.echo(json.dumps(_jsonable(data), indent=2, sort_keys=True))

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[None]:
        """A spinner on stderr while the block runs (none with --quiet/--json)."""
        if self.quiet:
            yield
        else:
            with progress_console.status(text):
                yield


def _jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as null (strict JSON has no Infinity/NaN) and paths as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn a QuantaError (or an OS error such as a full disk) into one line on stderr and exit status 2."""
    try:
        yield
    except (QuantaError, OSError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code=2) from exc


def _numbers_table(title: str, label: str, columns: tuple[str, ...]) -> Table:
    """A table with one text column and right-aligned number columns that never wrap."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)  # 7 columns fit 80 characters
    table.add_column(label, no_wrap=True)
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True)
    return table


@app.command()
def formats(as_json: JsonOpt = False, quiet: QuietOpt = False, seed: SeedOpt = 0) -> None:
    """List every registered value format with examples."""
    from quanta.formats import families

    out = _Out(as_json, quiet, seed)
    fams = families()
    out.json({"formats": [{"examples": list(f.examples), "summary": f.summary} for f in fams]})
    table = Table(title="quanta formats")
    table.add_column("examples")
    table.add_column("what")
    for f in fams:
        table.add_row(", ".join(f.examples), f.summary)
    out.print(table)
    out.note("Combine a format with a granularity and options, e.g. int4:g128:asym (see docs/schemes.md).")


@app.command()
def recipes(as_json: JsonOpt = False, quiet: QuietOpt = False, seed: SeedOpt = 0) -> None:
    """Explain the preset grammar and list the named presets."""
    from quanta.methods import available_methods
    from quanta.recipe import PRESET_GRAMMAR, SPECIAL_PRESETS, preset

    methods = available_methods()
    out = _Out(as_json, quiet, seed)
    examples = {
        "w8a16": "int8 weights per channel, float activations",
        "w4a16-g128": "int4 weights in groups of 128, bf16 scales and int zero points",
        "w8a8": "int8 weights per channel, static per-tensor int8 activations (needs calibration data)",
        "w8a8-dyn": "int8 weights per channel, int8 activations per token computed at run time",
    }
    rows = []
    for name, what in [*examples.items(), *((n, d) for n, (_, d) in SPECIAL_PRESETS.items())]:
        rule = preset(name).rules[-1]
        act = "float" if rule.activation is None else str(rule.activation)
        rows.append({"preset": name, "weights": str(rule.weight), "activations": act, "what": what})
    out.json({"grammar": PRESET_GRAMMAR, "methods": methods, "presets": rows})
    out.print(f"Presets follow [bold]{escape(PRESET_GRAMMAR)}[/]:")
    out.print("  W weight bits: per output channel, or groups of N along the reduction dim with -gN")
    out.print("  A activation bits: 16 = weights only; otherwise static per-tensor, or per-token with -dyn")
    out.print(f"  method: {', '.join(methods)} (default rtn; join with _, e.g. cle_bc); +kv8/+kv4: KV-cache bits")
    out.print("  Every preset keeps embeddings and lm_head in float.")
    table = Table(title="examples and named presets")
    for col in ("preset", "weights", "activations", "what"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["preset"], row["weights"], row["activations"], row["what"])
    out.print(table)


@app.command()
def inspect(
    directory: Annotated[Path, typer.Argument(help="A directory written by quanta.save.")],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Show the per-module schemes, kernels and bytes of a saved quantized model."""
    from quanta.checkpoint import CONFIG_FILE

    out = _Out(as_json, quiet, seed)
    path = directory / CONFIG_FILE
    with _errors():
        try:
            config = json.loads(path.read_text())
            modules = dict(config["modules"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise QuantaError(
                f"{path} is not a readable quanta.json ({exc}); pass a directory quanta.save wrote."
            ) from exc
    out.json(config)
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
    out.print(table)
    if "int8_flow" in config:
        state = "on" if config["int8_flow"] else "off"
        out.print(f"int8 flow between int8 convolutions: {state} (quanta.nn.int8_flow; docs/kernels.md)")
    kv_bits = (config.get("recipe") or {}).get("kv_bits")
    if kv_bits:
        out.print(f"KV cache: int{kv_bits} codes (quanta.lm.kv_cache), used by quanta generate and quanta eval")
    if config.get("left_in_float"):
        out.note(f"left in float (a rule matched, no quantized twin): {', '.join(config['left_in_float'])}")


@app.command()
def scheme(
    text: Annotated[str, typer.Argument(help="A scheme string such as int4:g128:asym.")],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Parse a scheme string and explain it."""
    from quanta.scheme import QScheme

    out = _Out(as_json, quiet, seed)
    with _errors():
        s = QScheme.parse(text)
    fmt = s.fmt
    spec = fmt.param_spec(s)
    out.json(
        {
            "canonical": str(s),
            "format": fmt.name,
            "summary": fmt.summary,
            "bits": fmt.bits,
            "granularity": s.granularity,
            "group_size": s.group_size,
            "mode": s.mode,
            "narrow": s.narrow,
            "scale_dtype": s.scale_dtype if spec else None,
            "rounding": s.rounding,
            "stores": {k: {"shape": list(t), "dtype": str(d).removeprefix("torch.")} for k, (t, d) in spec.items()},
        }
    )
    out.print(f"canonical: [bold]{s}[/]")
    out.print(f"format:    {fmt.name} - {fmt.summary} ({fmt.bits} bit{'s' if fmt.bits > 1 else ''} per code)")
    grain = {
        "tensor": "one group: the whole tensor",
        "channel": "one group per output channel, along the reduction dimension",
        "group": f"groups of {s.group_size} along the reduction dimension",
    }
    out.print(f"grouping:  {grain[s.granularity]}")
    dtype_note = f"; parameters stored as {s.scale_dtype}" if spec else ""
    out.print(f"mode:      {s.mode}{', narrow range' if s.narrow else ''}{dtype_note}")
    out.print(f"rounding:  {'round half to even' if s.rounding == 'rne' else 'stochastic'}")
    stored = ", ".join(f"{k} {str(d).removeprefix('torch.')}{list(t) if t else ''}" for k, (t, d) in spec.items())
    out.print(f"stores:    packed codes{' + per group: ' + stored if stored else ' only (fixed grid)'}")


class _Batches:
    """Calibration batches, iterable any number of times; each pass advances a progress bar on stderr."""

    def __init__(self, batches: list[Any], show: bool) -> None:
        self.batches, self.show = batches, show

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        if not self.show:
            yield from self.batches
            return
        from rich.progress import Progress

        with Progress(console=progress_console, transient=True) as bar:
            task = bar.add_task("calibrating", total=len(self.batches))
            for batch in self.batches:
                yield batch
                bar.advance(task)


@app.command()
def quantize(
    model: Annotated[
        str,
        typer.Argument(
            help="zoo:NAME=PATH (a zoo model: lenet5, resnet20..56, and its local state_dict file) or the local "
            "directory of a transformers model."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The directory to write (quanta.save layout).")],
    recipe: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--recipe",
            "-r",
            help="A preset (w8a16, w8a8, w4a16-g128, ...), a recipe JSON file or a quanta.json (its recipe).",
        ),
    ] = None,
    target_bpw: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--target-bpw", help="Mixed precision: choose per-layer candidates within B bits per weight."),
    ] = None,
    max_bytes: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--max-bytes", help="Mixed precision within a whole-model size: 180000, 180k, 1.5M, 64KiB."),
    ] = None,
    candidates: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--candidates",
            help="Mixed precision: comma-separated presets per layer (default w2a16-g32,w3a16-g32,w4a16-g32,"
            "w8a16; language models: -gptq on the 2-4 bit ones).",
        ),
    ] = None,
    calib: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Zoo models: an .npz with an array x of NCHW float images. Language models: a UTF-8 text file."
        ),
    ] = None,
    nsamples: Annotated[int, typer.Option(min=1, help="Language models: calibration windows.")] = 128,
    seqlen: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=2, help="Language models: tokens per window (default: min(2048, the context))."),
    ] = None,
    eval_data: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--eval",
            help="Zoo models: an .npz with x (images) and y (labels): float vs quantized accuracy. Language models: "
            "a UTF-8 text file: perplexity and KL vs float, in the report.",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per calibration/evaluation batch.")] = 500,
    max_batches: Annotated[int, typer.Option(min=1, help="Calibrate on at most this many batches.")] = 16,
    layers: Annotated[
        bool, typer.Option("--layers", help="Also print per-layer output SQNR vs float (on the first batch).")
    ] = False,
    no_report: Annotated[
        bool, typer.Option("--no-report", help="Do not write report.json / report.html beside the model.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it exists.")] = False,
    offload: Annotated[
        bool,
        typer.Option(
            "--offload",
            help="Language models: read each block's weights from disk just before quantizing it (peak memory: "
            "about one float block plus the calibration activations and the quantized result).",
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Language models: record each finished block beside OUTPUT (.OUTPUT.resume/); a run killed "
            "midway continues from its last finished block with the same result, byte for byte.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Quantize a model with a recipe and save it: quanta.quantize + quanta.save, then reload and check."""
    import copy

    import torch

    import quanta
    from quanta.cli_data import ZOO_INPUTS, images_from, labels_from, parse_model, read_npz
    from quanta.eval import accuracy, layer_errors
    from quanta.nn.base import QuantModule
    from quanta.recipe import resolve_recipe
    from quanta.zoo import load_pretrained

    out = _Out(as_json, quiet, seed)
    if target_bpw is not None or max_bytes is not None:  # mixed precision under a budget: quanta.cli_mixed
        from quanta.cli_mixed import quantize_mixed

        opts = {"nsamples": nsamples, "seqlen": seqlen, "batch_size": batch_size, "max_batches": max_batches}
        with _errors():
            if recipe is not None or offload or resume or eval_data is not None or layers:
                raise QuantaError(
                    "--target-bpw/--max-bytes choose the recipe: drop -r, --offload, --resume, --eval, --layers."
                )
            quantize_mixed(
                model,
                output,
                calib,
                target_bpw,
                max_bytes,
                candidates,
                opts | {"overwrite": overwrite, "seed": seed, "report": not no_report},
                out,
            )
        return
    if recipe is None:
        with _errors():
            raise QuantaError(
                "give a recipe (-r w4a16-g128, a recipe JSON) or a budget (--target-bpw 3.5, --max-bytes 180k)."
            )
    if Path(model).is_dir():  # a transformers model directory
        from quanta.cli_lm import quantize_hf

        quantize_hf(
            Path(model),
            recipe,
            output,
            calib,
            nsamples,
            seqlen,
            overwrite,
            out,
            offload=offload,
            resume=resume,
            eval_text=eval_data,
            report=not no_report,
        )
        return
    start = time.perf_counter()
    with _errors():
        if offload or resume:
            raise QuantaError("--offload and --resume are for language models (a transformers directory).")
        # Everything that can be checked cheaply is checked before any work.
        name, weights = parse_model(model)
        if output.exists() and not overwrite:
            raise QuantaError(f"{output} already exists; pass --overwrite to replace it, or choose another -o.")
        resolved = resolve_recipe(recipe)
        if calib is None and any(r.activation is not None and not r.dynamic for r in resolved.rules):
            raise QuantaError(
                f"recipe {recipe} quantizes activations statically and needs calibration images: pass --calib "
                "FILE.npz (an array x), or use dynamic activations (e.g. w8a8-dyn)."
            )
        calib_x = images_from(read_npz(calib, ("x",))["x"], calib, name) if calib is not None else None
        test = None
        if eval_data is not None:
            arrays = read_npz(eval_data, ("x", "y"))
            test_x = images_from(arrays["x"], eval_data, name)
            test = (test_x, labels_from(arrays["y"], eval_data, len(test_x)))

        net = load_pretrained(name, weights)
        reference = copy.deepcopy(net) if layers or not no_report else None
        float_nbytes = quanta.model_nbytes(net)
        float_acc = None
        if test is not None:
            with out.status("evaluating the float model..."):
                float_acc = accuracy(net, test, batch_size=batch_size)
        batches = [] if calib_x is None else list(calib_x.split(batch_size)[:max_batches])
        quanta.quantize(
            net, recipe, calib=_Batches(batches, not out.quiet) if batches else None, progress=not out.quiet
        )
        quanta.save(net, output, overwrite=overwrite)

        # The saved files are what a user gets: reload them (quanta.json names the zoo model, so no skeleton is
        # needed) and check they reproduce the quantized model exactly.
        loaded = quanta.load(output)
        probe = test[0][:batch_size] if test is not None else torch.randn(8, *ZOO_INPUTS[name])
        with torch.no_grad():
            if not torch.equal(loaded(probe), net(probe)):
                raise QuantaError(f"{output} does not reproduce the quantized model's outputs; please report this.")
        quant_acc = None if test is None else accuracy(loaded, test, batch_size=batch_size)
        per_layer = []
        if layers and reference is not None:
            per_layer = layer_errors(
                reference, loaded, [test[0][:batch_size] if test else batches[0] if batches else probe]
            )
        report_lines: list[str] = []
        if not no_report:  # report.json + report.html beside the model (quanta.cli_report)
            from quanta.cli_report import make_report

            sources = {"ref": model, "eval": None if eval_data is None else str(eval_data), "seqlen": None}
            report_lines = make_report(output, reference, test, sources | {"max_tokens": None}, out)

    packed = sum(1 for m in loaded.modules() if isinstance(m, QuantModule))
    nbytes = quanta.model_nbytes(loaded)
    result: dict[str, Any] = {
        "model": name,
        "weights": weights,
        "recipe": recipe,
        "output": output,
        "packed_modules": packed,
        "float_nbytes": float_nbytes,
        "nbytes": nbytes,
        "calib": None
        if calib is None
        else {"file": calib, "images": sum(len(b) for b in batches), "batches": len(batches)},
        "eval": None
        if test is None
        else {"file": eval_data, "images": len(test[1]), "float_accuracy": float_acc, "accuracy": quant_acc},
        "layers": [vars(e) for e in per_layer],
        "reloaded_bit_identical": True,
        "report": None if no_report else output / "report.html",
        "seconds": time.perf_counter() - start,
    }
    out.json(result)
    out.print(
        f"quantized {name} ({weights}) with {recipe}: {packed} modules packed, "
        f"{float_nbytes:,} -> {nbytes:,} bytes ({float_nbytes / nbytes:.1f}x smaller)"
    )
    if calib is not None:
        out.print(f"calibrated on {result['calib']['images']:,} images ({len(batches)} batches) from {calib}")
    if test is not None and float_acc is not None and quant_acc is not None:
        out.print(
            f"accuracy on {len(test[1]):,} images from {eval_data}: float {float_acc:.2%}, "
            f"quantized {quant_acc:.2%} ({100 * (quant_acc - float_acc):+.2f} pt)"
        )
    if per_layer:
        table = _numbers_table(
            "per-layer error vs float", "module", ("class", "output SQNR dB", "MSE", "weight SQNR dB")
        )
        for e in per_layer:
            w = "" if e.weight_sqnr_db is None else f"{e.weight_sqnr_db:.1f}"
            table.add_row(e.name, e.kind, f"{e.output_sqnr_db:.1f}", f"{e.output_mse:.3g}", w)
        out.print(table)
    out.print(f"wrote {output} (model.safetensors, quanta.json); reloaded it: outputs bit-identical")
    for line in report_lines:
        out.print(line)
    out.note(f"inspect it with: quanta inspect {output}   ({time.perf_counter() - start:.1f} s)")


def _presets_table(title: str, base: Any, rows: list[Any]) -> Table:
    """recipe | accuracy | change | bytes | ratio | latency ms | speedup; skipped presets say so."""
    table = _numbers_table(title, "recipe", ("accuracy", "change", "bytes", "ratio", "ms/batch", "speedup"))
    table.add_row("float", f"{base.accuracy:.2%}", "", f"{base.nbytes:,}", "1.0x", f"{base.latency_ms:.2f}", "1.00x")
    for p in rows:
        if p.skipped:
            table.add_row(p.recipe, "skipped", "", "", "", "", "")
            continue
        table.add_row(
            p.recipe,
            f"{p.accuracy:.2%}",
            f"{100 * (p.accuracy - base.accuracy):+.1f}",
            f"{p.nbytes:,}",
            f"{base.nbytes / p.nbytes:.1f}x",
            f"{p.latency_ms:.2f}",
            f"{p.speedup:.2f}x",
        )
    return table


def _preset_json(base: Any, rows: list[Any]) -> list[dict[str, Any]]:
    return [vars(base), *(vars(r) for r in rows)]


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
    data: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="The shared data directory: also run the real pretrained LeNet-5 and ResNet-20 "
            "(default: ../shared/data beside the working directory or the package, when present)."
        ),
    ] = None,
    no_data: Annotated[bool, typer.Option("--no-data", help="Skip the real pretrained models.")] = False,
    plot: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Where to write the accuracy-vs-bytes PNG (default: demo_accuracy_vs_bytes.png in the cache)."
        ),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Train a small CNN on scikit-learn's digits (cached), quantize it with every format and preset, and plot it.

    With the shared data present (or --data DIR), the real pretrained LeNet-5 and ResNet-20 run the same presets.
    """
    from quanta.demo import default_cache_dir, find_data_dir, load_or_train, run_demo, run_presets, run_real
    from quanta.eval.plot import plot_accuracy_vs_bytes

    out = _Out(as_json, quiet, seed)
    start = time.perf_counter()
    cache = cache_dir or default_cache_dir()
    with _errors():
        data_dir = None if no_data else find_data_dir(data)
        with out.status("loading or training the digits CNN..."):
            model, path, trained = load_or_train(cache, retrain, seed=seed)
    out.note(f"{'trained and cached' if trained else 'loaded cached'} digits CNN: {path}")
    with out.status("quantizing with every format..."):
        baseline, rows = run_demo(model, seed=seed)
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
            f"{100 * (r.accuracy - baseline.accuracy):+.1f}",
        )
    out.print(table)
    out.note("bits/weight counts codes plus scales, zero points and codebooks; accuracy uses the dequantized weights.")

    with out.status("quantizing the whole model with presets..."):
        base, preset_rows = run_presets(model, seed=seed)
    models: dict[str, Any] = {"digits": {"title": "Digits CNN", "presets": _preset_json(base, preset_rows)}}
    panels = {"Digits CNN (360 test images)": _points(base, preset_rows)}
    tables = [_presets_table("Whole-model presets, digits CNN; batch of 360 images", base, preset_rows)]
    skipped = {p.recipe: p.skipped for p in preset_rows if p.skipped}
    if data_dir is not None:
        with out.status(f"running the real pretrained models from {data_dir}..."), _errors():
            real = run_real(data_dir)
        for m, m_base, m_rows in real:
            models[m.key] = {"title": m.title, "presets": _preset_json(m_base, m_rows)}
            panels[m.title] = _points(m_base, m_rows)
            tables.append(_presets_table(f"{m.title}; batch of 64 images", m_base, m_rows))
            skipped.update({p.recipe: p.skipped for p in m_rows if p.skipped})
    with _errors():
        plot_path = plot_accuracy_vs_bytes(panels, plot or cache / "demo_accuracy_vs_bytes.png")
    out.json(
        {
            "model": {"cache": path, "trained": trained, "seed": seed},
            "formats": [vars(baseline), *(vars(r) for r in rows)],
            "models": models,
            "data": data_dir,
            "plot": plot_path,
        }
    )
    for t in tables:
        out.print(t)
    for recipe, why in skipped.items():
        out.print(f"{recipe} skipped: {escape(str(why))}")
    if data_dir is None:
        out.note("real pretrained models: not run (pass --data DIR with the shared data to include them).")
    out.note(
        "bytes = quanta.model_nbytes (weights, biases, scales); latency: fp32 inputs, best of alternating rounds; "
        "speedup = float latency / quantized latency in the same run."
    )
    out.print(f"plot: {plot_path}")
    out.note(f"Done in {time.perf_counter() - start:.1f} s; wrote only the cache and the plot.")


def _points(base: Any, rows: list[Any]) -> list[tuple[str, int, float]]:
    return [(r.recipe, r.nbytes, r.accuracy) for r in (base, *rows) if not r.skipped]


from quanta import cli_audio, cli_export, cli_image, cli_lm, cli_report, cli_sensitivity, cli_sweep  # noqa: E402, F401  (register their commands)

if __name__ == "__main__":  # after the imports above, so `python -m quanta.cli` sees every command
    app()
