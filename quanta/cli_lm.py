"""The language-model side of the command line: ``quantize`` of a Hugging Face directory, ``eval``, ``generate``.

``quanta quantize SRC_DIR -r PRESET --calib FILE.txt -o OUT_DIR`` tokenizes the whole calibration file without BOS,
takes ``--nsamples`` seeded windows of ``--seqlen`` tokens (default: 128 windows of min(2048, the context)),
quantizes block by block (``quanta.lm.quantize_sequential``), saves (config.json and the tokenizer files beside
model.safetensors + quanta.json), reloads ``OUT_DIR`` with ``quanta.load`` alone and checks that it gives the same
logits. ``quanta eval DIR --ppl FILE.txt [--ref SRC_DIR]`` prints perplexity (and, against the float reference,
mean KL and top-1 agreement); ``quanta generate DIR --prompt TEXT`` prints greedy text.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Annotated, Any, NamedTuple, Optional

import typer

from quanta.cli import JsonOpt, QuietOpt, SeedOpt, _errors, _numbers_table, _Out, app
from quanta.errors import QuantaError

__all__ = ["quantize_hf"]

CALIB_BATCH = 8  # calibration windows per forward pass


def _model_and_tokenizer(directory: Path) -> tuple[Any, Any]:
    from quanta.lm import load_hf

    return load_hf(directory)  # a quanta directory loads quantized, a transformers one in float


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def text_calibration_batches(path: Path, tokenizer: Any, window: int, nsamples: int, seed: int) -> list[Any]:
    """``nsamples`` seeded windows of ``window`` tokens from the text file ``path``, ``CALIB_BATCH`` to a batch.

    Raises:
        QuantaError: the file holds fewer tokens than one window.
    """
    from quanta.lm import calibration_windows, tokenize_file

    ids = tokenize_file(path, tokenizer)
    tokens = int(ids.numel())
    if tokens < window:
        raise QuantaError(
            f"{path} has {tokens} tokens, fewer than one calibration window of {window}; pass a longer file or a "
            "smaller --seqlen."
        )
    return list(calibration_windows(ids, n=nsamples, length=window, seed=seed).split(CALIB_BATCH))


def _window(model: Any, seqlen: int | None) -> int:
    from quanta.lm import context_length

    return context_length(model) if seqlen is None else seqlen


class LMInputs(NamedTuple):
    """What the data-driven commands (sensitivity, sweep, the budget path) load for a transformers directory."""

    net: Any
    tokenizer: Any
    window: int  # tokens per calibration / evaluation window
    batches: list[Any] | None  # the --calib windows, CALIB_BATCH to a batch (None without --calib)
    eval_ids: Any  # the first max_tokens token ids of --ppl (None without --ppl)


def is_lm_directory(model: str | Path) -> bool:
    """Whether ``model`` names a transformers directory (one with a config.json), not a zoo model."""
    return Path(model).is_dir() and (Path(model) / "config.json").is_file()


def lm_inputs(source: Path, calib: Path | None, ppl: Path | None, opts: dict[str, Any]) -> LMInputs:
    """The model, tokenizer and window of ``source``, with its calibration windows and evaluation tokens
    (``opts``: seqlen, nsamples, seed, max_tokens).

    Raises:
        QuantaError: ``calib`` is an .npz file, or holds fewer tokens than one window.
    """
    from quanta.lm import tokenize_file

    if calib is not None and calib.suffix.lower() == ".npz":
        raise QuantaError(f"{calib}: a language model calibrates on a text file (--calib FILE.txt), not .npz.")
    net, tokenizer = _model_and_tokenizer(source)
    window = _window(net, opts["seqlen"])
    ids = None if ppl is None else tokenize_file(ppl, tokenizer)[: opts.get("max_tokens")]
    batches = None
    if calib is not None:
        batches = text_calibration_batches(calib, tokenizer, window, opts["nsamples"], opts["seed"])
    return LMInputs(net, tokenizer, window, batches, ids)


def quantize_hf(
    source: Path,
    recipe: str,
    output: Path,
    calib: Path | None,
    nsamples: int,
    seqlen: int | None,
    overwrite: bool,
    out: _Out,
    *,
    offload: bool = False,
    resume: bool = False,
    eval_text: Path | None = None,
    report: bool = True,
) -> None:
    """``quanta quantize`` for a transformers model directory (the CLI's ``quantize`` dispatches here); with
    ``report``, report.json/report.html (perplexity and KL on ``eval_text`` when given) are written beside it."""
    import torch

    import quanta
    from quanta.eval import layer_errors
    from quanta.lm import BlockState, load_offloaded, quantize_sequential, tokenize_file
    from quanta.lm.hf import _load_tokenizer, transformers_module
    from quanta.lm.kv_cache import calibrate_kv, kv_bits_of, kv_key_scales_of
    from quanta.methods.registry import get_method
    from quanta.nn.base import QuantModule
    from quanta.recipe import resolve_recipe

    start = time.perf_counter()
    with _errors():
        if output.exists() and not overwrite:
            raise QuantaError(f"{output} already exists; pass --overwrite to replace it, or choose another -o.")
        resolved = resolve_recipe(recipe)
        if eval_text is not None and eval_text.suffix.lower() == ".npz":
            raise QuantaError(f"{eval_text}: a language model is evaluated on a text file (--eval FILE.txt), not .npz.")
        if calib is not None and calib.suffix.lower() == ".npz":
            raise QuantaError(f"{calib}: a language model calibrates on a text file (--calib FILE.txt), not .npz.")
        needs_data = any(r.activation is not None and not r.dynamic for r in resolved.rules) or any(
            get_method(name).needs_data for r in resolved.rules if not r.skip for name in r.method.split("_")
        )
        if calib is None and needs_data:
            raise QuantaError(
                f"recipe {recipe} learns from data: pass --calib FILE.txt (text in the model's domain), or use a "
                "data-free preset (e.g. w4a16-g128, w4a16-g64-hqq)."
            )
        if (offload or resume) and calib is None:
            raise QuantaError("--offload and --resume work block by block, on calibration data: pass --calib FILE.txt.")
        if (source / "quanta.json").is_file():
            raise QuantaError(f"{source} is already quantized (it has quanta.json); pass the float model directory.")
        with out.status(f"loading {source}{' (blocks stay on disk)' if offload else ''}..."):
            if offload:
                model = load_offloaded(source)
                tokenizer = _load_tokenizer(transformers_module(), source)
            else:
                model, tokenizer = _model_and_tokenizer(source)
        window = _window(model, seqlen)
        batches: list[Any] = []
        tokens = 0
        if calib is not None:
            batches = text_calibration_batches(calib, tokenizer, window, nsamples, out.seed)
        # The float model for per-layer errors: not under --offload, whose point is never holding it whole.
        reference = None if offload else copy.deepcopy(model)
        # (model_nbytes tells tied tensors by address, which meta tensors lack: count offloaded ones by identity)
        float_nbytes = (
            sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
            if offload
            else quanta.model_nbytes(model)
        )
        state_dir = output.with_name(f".{output.name}.resume") if resume else None
        if state_dir is not None and state_dir.is_dir():
            out.note(f"resuming from the per-block state in {state_dir}")
        quantize_start = time.perf_counter()
        if batches:  # block by block, each block calibrated on the quantized blocks' outputs before it
            quantize_sequential(model, recipe, batches, progress=not out.quiet, resume=state_dir)
        else:
            quanta.quantize(model, recipe, progress=not out.quiet)
        kv_bits = kv_bits_of(model)
        if kv_bits is not None and batches:  # +kvN: static per-channel key scales, on the quantized model's keys
            calibrate_kv(model, batches, kv_bits)
        quantize_seconds = time.perf_counter() - quantize_start
        quanta.save(model, output, overwrite=overwrite, tokenizer=tokenizer)
        if state_dir is not None:
            BlockState(state_dir, "").clear()  # the model is saved: the per-block state has served
        loaded = quanta.load(output)
        probe = batches[0][:1] if batches else torch.arange(min(window, 16)).unsqueeze(0) % tokenizer.vocab_size
        with torch.no_grad():
            if not torch.equal(loaded(probe).logits, model(probe).logits):
                raise QuantaError(f"{output} does not reproduce the quantized model's logits; please report this.")
        per_layer = [] if reference is None else layer_errors(reference, loaded, [probe])
        report_lines: list[str] = []
        if report:  # report.json + report.html beside the model (quanta.cli_report)
            from quanta.cli_report import make_report

            eval_ids = None if eval_text is None else tokenize_file(eval_text, tokenizer)
            sources = {"ref": None if reference is None else str(source), "eval": eval_text, "seqlen": None}
            report_lines = make_report(output, reference, eval_ids, {**sources, "max_tokens": None}, out)
    packed = sum(1 for m in loaded.modules() if isinstance(m, QuantModule))
    nbytes = quanta.model_nbytes(loaded)
    result: dict[str, Any] = {
        "model": str(source),
        "recipe": recipe,
        "output": output,
        "packed_modules": packed,
        "float_nbytes": float_nbytes,
        "nbytes": nbytes,
        "calib": None if calib is None else {"file": calib, "tokens": tokens, "windows": nsamples, "seqlen": window},
        "kv_key_scales": "calibrated" if kv_key_scales_of(loaded) is not None else None,
        "layers": [vars(e) for e in per_layer],
        "quantize_seconds": quantize_seconds,
        "offload": offload,
        "peak_rss_bytes": peak_rss_bytes(),
        "reloaded_bit_identical": True,
        "report": output / "report.html" if report else None,
        "seconds": time.perf_counter() - start,
    }
    out.json(result)
    out.print(
        f"quantized {source} with {recipe}: {packed} modules packed, {float_nbytes:,} -> {nbytes:,} bytes "
        f"({float_nbytes / nbytes:.1f}x smaller) in {quantize_seconds:.1f} s"
    )
    out.print(f"peak memory (RSS) of this run: {result['peak_rss_bytes'] / 2**20:,.0f} MiB")
    if calib is not None:
        out.print(f"calibrated on {nsamples} windows of {window} tokens from {calib} ({tokens:,} tokens)")
    table = _numbers_table("per-layer error vs float (one window)", "module", ("class", "output SQNR dB", "MSE"))
    for e in per_layer:
        table.add_row(e.name, e.kind, f"{e.output_sqnr_db:.1f}", f"{e.output_mse:.3g}")
    if per_layer:
        out.print(table)
    elif offload:
        out.note("no per-layer errors under --offload (they need the whole float model in memory)")
    out.print(f"wrote {output} (model.safetensors, quanta.json, config.json, tokenizer); reloaded it: same logits")
    for line in report_lines:
        out.print(line)
    out.note(f"evaluate it with: quanta eval {output} --ppl FILE.txt --ref {source}")


@app.command("eval")
def eval_lm(
    model: Annotated[Path, typer.Argument(help="A quanta output directory or a transformers model directory.")],
    ppl: Annotated[Path, typer.Option("--ppl", help="A UTF-8 text file: perplexity over its tokens.")],
    ref: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--ref", help="The float model's directory: also mean KL and top-1 agreement against it."),
    ] = None,
    seqlen: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=2, help="Tokens per window (default: min(2048, the model's context))."),
    ] = None,
    max_tokens: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=2, help="Evaluate only the first N tokens of the file."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 16,
    kv_bits: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--kv-bits", help="Run through an int8 / int4 KV cache (default: the recipe's +kvN, if any)."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Perplexity of a text file under a language model; with --ref, KL and top-1 agreement with the float one."""
    import quanta
    from quanta.eval import mean_nll, next_token_agreement
    from quanta.lm import tokenize_file
    from quanta.lm.kv_cache import kv_bits_of, with_kv_cache

    out = _Out(as_json, quiet, seed)
    start = time.perf_counter()
    with _errors():
        with out.status(f"loading {model}..."):
            net, tokenizer = _model_and_tokenizer(model)
        ids = tokenize_file(ppl, tokenizer)
        if max_tokens is not None:
            ids = ids[:max_tokens]
        window = _window(net, seqlen)
        bits = kv_bits if kv_bits is not None else kv_bits_of(net)
        with out.status("scoring..."):
            nll = mean_nll(with_kv_cache(net, bits), ids, window, batch_size=batch_size)
        agreement = None
        ref_nll = None
        if ref is not None:
            with out.status(f"loading {ref} and comparing..."):
                reference, _ = _model_and_tokenizer(ref)
                agreement = next_token_agreement(
                    reference, with_kv_cache(net, bits), ids, window, batch_size=batch_size
                )
                ref_nll = mean_nll(reference, ids, window, batch_size=batch_size)
    result: dict[str, Any] = {
        "model": model,
        "text": ppl,
        "tokens": int(ids.numel()),
        "seqlen": window,
        "nll": nll,
        "perplexity": math.exp(nll),
        "nbytes": quanta.model_nbytes(net),
        "kv_bits": bits,
        "reference": None
        if agreement is None or ref_nll is None
        else {
            "model": ref,
            "perplexity": math.exp(ref_nll),
            "kl": agreement.kl,
            "top1_agreement": agreement.top1,
            "positions": agreement.positions,
        },
        "seconds": time.perf_counter() - start,
    }
    out.json(result)
    out.print(
        f"{model}: perplexity {math.exp(nll):.4f} (mean NLL {nll:.4f} nats) on {ids.numel():,} tokens of {ppl}, "
        f"windows of {window}{'' if bits is None else f', int{bits} KV cache'}"
    )
    if agreement is not None and ref_nll is not None:
        out.print(
            f"vs {ref}: float perplexity {math.exp(ref_nll):.4f} ({100 * math.expm1(nll - ref_nll):+.2f}%), "
            f"mean KL {agreement.kl:.5f} nats/token, top-1 agreement {agreement.top1:.2%} "
            f"over {agreement.positions:,} positions"
        )


@app.command()
def generate(
    model: Annotated[Path, typer.Argument(help="A quanta output directory or a transformers model directory.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to continue.")],
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 32,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Greedy continuation of a prompt (deterministic: the same model and prompt give the same tokens)."""
    import torch

    from quanta.lm.kv_cache import kv_bits_of, kv_key_scales_of, quantized_kv_cache

    out = _Out(as_json, quiet, seed)
    start = time.perf_counter()
    with _errors():
        with out.status(f"loading {model}..."):
            net, tokenizer = _model_and_tokenizer(model)
        if not hasattr(net, "generate"):
            raise QuantaError(f"{model} is not a generative model (no generate); use quanta eval for encoders.")
        ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.int64)
        bits = kv_bits_of(net)
        # the recipe's +kvN, with the key scales calibrated at quantization when there are some
        cache = {} if bits is None else {"cache": quantized_kv_cache(bits, kv_key_scales_of(net))}
        with torch.no_grad():
            tokens = net.generate(
                ids,
                **cache,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0,
            )
        new = tokens[0, ids.shape[1] :].tolist()
        text = tokenizer.decode(new, skip_special_tokens=True)
    seconds = time.perf_counter() - start
    out.json({"model": model, "prompt": prompt, "tokens": new, "text": text, "kv_bits": bits, "seconds": seconds})
    out.print(f"{prompt}{text}")
    out.note(f"{len(new)} tokens from {model} (greedy), {seconds:.1f} s")
