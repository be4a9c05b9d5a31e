"""``quanta export DIR --format onnx -o OUT``: a saved quantized model written for another runtime.

DIR is a ``quanta.save`` directory of a zoo model or a transformers model (``quanta.load`` rebuilds either without
a skeleton). The format is looked up in the export registry (:func:`quanta.export.exporters`), so every registered
target is a ``--format`` choice. Targets that trace the model get an example input: a zoo model's image shape (or
``--input-shape``), or ``--seq-len`` token ids for a language model. For ONNX, ``--verify`` (on by default when
onnxruntime is installed) runs the written file in ONNX Runtime and prints its largest difference from quanta.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from quanta.cli import JsonOpt, QuietOpt, SeedOpt, _errors, _Out, app
from quanta.errors import QuantaError

__all__ = ["export_command"]


def _example_inputs(model: Any, input_shape: str | None, seq_len: int) -> tuple[Any, ...]:
    import torch

    from quanta.cli_data import ZOO_INPUTS
    from quanta.export.onnx import is_causal_lm

    if is_causal_lm(model):
        vocab = int(model.config.vocab_size)
        return (torch.randint(0, vocab, (1, seq_len)),)
    if input_shape is not None:
        try:
            shape = tuple(int(d) for d in input_shape.split(","))
        except ValueError as exc:
            raise QuantaError(
                f"--input-shape {input_shape!r} must be comma-separated integers, e.g. 1,3,32,32."
            ) from exc
        if not shape or min(shape) < 1:
            raise QuantaError(f"--input-shape {input_shape!r} needs positive sizes, e.g. 1,3,32,32.")
        return (torch.randn(*shape),)
    zoo = getattr(model, "quanta_zoo", None)
    if zoo in ZOO_INPUTS:
        return (torch.randn(1, *ZOO_INPUTS[zoo]),)
    raise QuantaError("cannot tell the model's input shape: pass --input-shape, e.g. 1,3,32,32.")


@app.command("export")
def export_command(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="A quanta.save directory (zoo or transformers).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The file to write.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="Target format (see docs/export.md), e.g. onnx.")],
    allow_float: Annotated[
        bool, typer.Option("--allow-float", help="Write weights the format cannot hold as dequantized float.")
    ] = False,
    input_shape: Annotated[
        Optional[str],  # noqa: UP045 - typer reads this annotation at runtime on Python 3.10
        typer.Option(help="Shape of the example input that traces the model, e.g. 1,3,32,32 (zoo: known)."),
    ] = None,
    seq_len: Annotated[int, typer.Option(min=1, help="Language models: tokens of the example input.")] = 16,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="ONNX: run the file in onnxruntime and compare with quanta.")
    ] = True,
    qtype: Annotated[
        Optional[str],  # noqa: UP045 - typer reads this annotation at runtime on Python 3.10
        typer.Option(help="GGUF: ggml type for float weights and requantized schemes (Q8_0, Q4_0, Q4_1, Q4_K)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it exists.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Export a saved quantized model (DIR) to another runtime's format, e.g. an ONNX QDQ graph."""
    import quanta
    from quanta.export import export, exporters

    out = _Out(as_json, quiet, seed)
    start = time.perf_counter()
    max_diff: float | None = None
    with _errors():
        name = fmt.strip().lower()
        targets = exporters()
        if name not in targets:
            raise QuantaError(f"--format {fmt!r} is not a target; choose one of {', '.join(targets)}.")
        if output.exists() and not overwrite:
            raise QuantaError(f"{output} already exists; pass --overwrite to replace it, or choose another -o.")
        with out.status(f"loading {directory}..."):
            model = quanta.load(directory)  # in eval mode, as exported graphs compute
        inputs = _example_inputs(model, input_shape, seq_len)
        options: dict[str, Any] = {"allow_float": True} if allow_float else {}
        if qtype is not None:
            if name != "gguf":
                raise QuantaError(f"--qtype is a GGUF option; --format {name} does not take it.")
            options["qtype"] = qtype
        with out.status(f"exporting to {name}..."):
            result = export(model, name, output, inputs, **options)
        if name == "onnx" and verify and importlib.util.find_spec("onnxruntime") is not None:
            from quanta.export.onnx import is_causal_lm
            from quanta.export.onnx_check import onnxruntime_session, reference_outputs, run_onnxruntime

            got = run_onnxruntime(onnxruntime_session(output), inputs)
            want = reference_outputs(model, inputs, hf=is_causal_lm(model))
            max_diff = float(abs(got - want).max())
    info = {
        "input": directory,
        "output": output,
        "format": result.format,
        "bytes": result.nbytes,
        "quantized": result.quantized,
        "in_float": result.in_float,
        "notes": list(result.notes),
        "max_abs_diff_vs_quanta": max_diff,
        "seconds": time.perf_counter() - start,
    }
    out.json(info)
    packed = len(result.quantized) - len(result.in_float)
    out.print(f"exported {directory} to {result.format}: {packed} quantized modules, {len(result.in_float)} as float")
    for module, how in list(result.quantized.items())[:8]:
        out.note(f"  {module}: {how}")
    if len(result.quantized) > 8:
        out.note(f"  ... and {len(result.quantized) - 8} more")
    if max_diff is not None:
        out.print(f"onnxruntime vs quanta's reference on the example input: max |diff| {max_diff:.3g}")
    out.print(f"wrote {output}: {result.nbytes:,} bytes ({', '.join(result.notes)})")
    out.note(f"Done in {info['seconds']:.1f} s.")
