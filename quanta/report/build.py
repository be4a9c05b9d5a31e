"""``build_report``: the facts of a saved quantized model, gathered into report.json's content (a plain dict).

Everything is recomputed from the directory (``quanta.load``) plus, optionally, the float model and evaluation
data, so ``quanta report DIR`` regenerates the same JSON as ``quanta quantize`` wrote: no timestamps, seeded noise.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quanta._version import __version__
from quanta.api import model_nbytes
from quanta.errors import CorruptDataError, QuantaError
from quanta.report.layers import histogram, layer_rows

__all__ = ["REPORT_VERSION", "build_report"]

REPORT_VERSION = 1
WORST_LAYERS = 3


def _config(directory: Path) -> dict[str, Any]:
    from quanta.checkpoint import CONFIG_FILE

    path = directory / CONFIG_FILE
    if not path.is_file():
        raise QuantaError(f"{directory} has no {CONFIG_FILE}; pass a directory written by quanta.save.")
    try:
        config = json.loads(path.read_text())
        dict(config["modules"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptDataError(f"{path} is unreadable ({exc}); write the model again with quanta.save.") from exc
    return dict(config)


def _sha256(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        digest.update(t.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _classifier_quality(quant: nn.Module, ref: nn.Module | None, data: tuple[torch.Tensor, torch.Tensor]) -> Any:
    """Accuracy of both models, and (with the float one) mean KL(float || quantized) and top-1 agreement."""
    x, y = data
    with torch.no_grad():
        q_logp = torch.cat([torch.log_softmax(quant(b).float(), -1) for b in x.split(500)])
        f_logp = None if ref is None else torch.cat([torch.log_softmax(ref(b).float(), -1) for b in x.split(500)])
    quality: dict[str, Any] = {
        "kind": "accuracy",
        "images": len(y),
        "sha256": _sha256(x, y),
        "accuracy": float((q_logp.argmax(-1) == y).double().mean()),
        "float_accuracy": None,
        "kl": None,
        "top1_agreement": None,
    }
    if f_logp is not None:
        kl = (f_logp.exp() * (f_logp - q_logp)).sum(-1).double().mean()
        quality.update(
            float_accuracy=float((f_logp.argmax(-1) == y).double().mean()),
            kl=float(kl),
            top1_agreement=float((f_logp.argmax(-1) == q_logp.argmax(-1)).double().mean()),
        )
    return quality


def _lm_quality(quant: nn.Module, ref: nn.Module | None, ids: torch.Tensor, window: int) -> dict[str, Any]:
    from quanta.eval import mean_nll, next_token_agreement

    nll = mean_nll(quant, ids, window)
    quality: dict[str, Any] = {
        "kind": "perplexity",
        "tokens": int(ids.numel()),
        "seqlen": window,
        "sha256": _sha256(ids),
        "perplexity": math.exp(nll),
        "float_perplexity": None,
        "kl": None,
        "top1_agreement": None,
    }
    if ref is not None:
        agreement = next_token_agreement(ref, quant, ids, window)
        quality.update(
            float_perplexity=math.exp(mean_nll(ref, ids, window)), kl=agreement.kl, top1_agreement=agreement.top1
        )
    return quality


def _output_sqnr(rows: list[dict[str, Any]], quant: nn.Module, ref: nn.Module, probe: Any) -> None:
    from quanta.eval import layer_errors

    errors = {e.name: e.output_sqnr_db for e in layer_errors(ref, quant, [probe], names=[r["name"] for r in rows])}
    for row in rows:
        row["output_sqnr_db"] = errors.get(row["name"])


def build_report(
    model_dir: str | os.PathLike[str],
    float_model: nn.Module | None = None,
    eval_data: tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None = None,
    *,
    window: int | None = None,
    robustness_images: int = 500,
    seed: int = 0,
    sources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Gather report.json's content for the quantized model saved in ``model_dir``.

    Args:
        model_dir: a directory written by ``quanta.save``.
        float_model: the float model it was quantized from (enables measured weight/output errors, float quality
            and robustness of the float model).
        eval_data: ``(x, y)`` images and labels (a classifier: accuracy, KL, robustness) or 1-D token ids (a
            language model: perplexity, KL, top-1 agreement; ``window`` tokens per window).
        window: language models: tokens per evaluation window (default: min(2048, the context)).
        robustness_images: classifiers: the first this many evaluation images are used for noise and FGSM.
        seed: seeds the robustness noise.
        sources: what the report was made from (paths as given), stored so ``quanta report DIR`` can redo it.

    Returns:
        A JSON-able dict: ``bytes``, ``layers``, ``histograms``, ``quality``, ``robustness``, ``energy``,
        ``provenance`` and more (docs/report.md lists every field).

    Raises:
        QuantaError: not a quanta directory, or a float model that does not match it.
    """
    from quanta.checkpoint import load
    from quanta.eval.energy import ENERGY_PJ, ENERGY_SOURCE, SCALING_ASSUMPTION, estimate_energy

    directory = Path(model_dir)
    config = _config(directory)
    quant = load(directory)
    ref = None if float_model is None else float_model.eval()
    rows = layer_rows(quant, config, ref)
    quantized_nbytes = int(config.get("model_nbytes") or model_nbytes(quant))
    packed = sum(r["nbytes"] for r in rows)
    float_nbytes = model_nbytes(ref) if ref is not None else _float_nbytes(quant)
    is_lm = bool(config.get("hf"))
    if is_lm:
        from quanta.lm import context_length

        window = window or context_length(quant)
    quality = None
    probe: Any = None
    if isinstance(eval_data, tuple):
        quality = _classifier_quality(quant, ref, eval_data)
        probe = eval_data[0][:64]
    elif isinstance(eval_data, torch.Tensor):
        quality = _lm_quality(quant, ref, eval_data, int(window or eval_data.numel()))
        probe = eval_data[: int(window or 64)].unsqueeze(0)
    if probe is None:
        vocab = getattr(getattr(quant, "config", None), "vocab_size", 2)
        probe = torch.arange(min(int(window or 16), 16)).unsqueeze(0) % vocab if is_lm else _zoo_probe(config)
    if ref is not None and rows and probe is not None:
        _output_sqnr(rows, quant, ref, probe)
    worst = sorted((r for r in rows if r["weight_rel_mse"] is not None), key=lambda r: -r["weight_rel_mse"])
    robust = None
    if isinstance(eval_data, tuple) and not is_lm:
        from quanta.eval.robustness import robustness

        models = {"float": ref, "quantized": quant} if ref is not None else {"quantized": quant}
        subset = (eval_data[0][:robustness_images], eval_data[1][:robustness_images])
        robust = robustness({k: m for k, m in models.items() if m is not None}, subset, seed=seed).to_dict()
    energy: dict[str, Any] | None = None
    if probe is not None:
        one = probe[:1]
        energy = {
            "source": ENERGY_SOURCE,
            "table_pj": dict(ENERGY_PJ),
            "assumptions": SCALING_ASSUMPTION,
            "float": estimate_energy(quant, one, as_float=True).to_dict(),
            "quantized": estimate_energy(quant, one).to_dict(),
        }
    recipe = config.get("recipe") or {}
    provenance = dict(config.get("provenance") or {})
    return {
        "report_version": REPORT_VERSION,
        "model_dir": str(directory),
        "model": config.get("zoo") or (config.get("hf") or {}).get("class") or "custom",
        "recipe": recipe.get("name"),
        "recipe_rules": recipe.get("rules", []),
        "bytes": {
            "float": int(float_nbytes),
            "quantized": quantized_nbytes,
            "ratio": float_nbytes / quantized_nbytes if quantized_nbytes else None,
            "packed_weights": packed,
            "float_source": "float model" if ref is not None else "computed from the packed shapes and dtypes",
        },
        "layers": rows,
        "left_in_float": list(config.get("left_in_float") or []),
        "histograms": [histogram(quant, ref, r["name"]) for r in worst[:WORST_LAYERS]],
        "quality": quality,
        "robustness": robust,
        "energy": energy,
        "provenance": {
            **provenance,
            "report_seed": seed,
            "report_versions": {
                "quanta": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "numpy": __import__("numpy").__version__,
            },
        },
        "sources": dict(sources or {}),
    }


def _float_nbytes(model: nn.Module) -> int:
    """The float model's bytes without it: packed weights at their original dtype plus every other parameter and
    buffer, except a packed module's buffers (codes, scales, activation quantizer and kernel state, which a float
    model lacks; its float parameters, the bias, are kept); tied tensors counted once."""
    from quanta.nn.base import QuantModule

    seen: set[tuple[int, int]] = set()
    total = 0
    for module in model.modules():
        tensors: list[tuple[str, torch.Tensor]] = list(module.named_parameters(recurse=False))
        if isinstance(module, QuantModule):
            for qt in module.qweights.values():
                total += qt.numel * torch.empty((), dtype=qt.dtype).element_size()
        else:
            tensors += list(module.named_buffers(recurse=False))
        for _, t in tensors:
            key = (t.data_ptr(), t.numel())
            if key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _zoo_probe(config: dict[str, Any]) -> torch.Tensor | None:
    """A zero image of the zoo model's input shape (for MAC counting when no evaluation data is given)."""
    from quanta.cli_data import ZOO_INPUTS

    shape = ZOO_INPUTS.get(str(config.get("zoo")))
    return None if shape is None else torch.zeros(1, *shape)
