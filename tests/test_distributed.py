"""Hessians summed across torch.distributed ranks (gloo) give the single-process codes, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import quanta
from quanta.distributed import TreeSum, tree_split
from quanta.errors import QuantaError

transformers = pytest.importorskip("transformers")

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch, torch.distributed as dist, transformers
    import quanta, quanta.distributed
    from quanta.lm import quantize_sequential

    torch.set_num_threads(1)
    out, rank, world, store, recipe = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    steps = [torch.randint(0, 96, (2, 24), generator=g) for _ in range(5)]  # 5: the ranks get 3 and 2
    torch.manual_seed(0)
    if world == 1:
        quantize_sequential(model, recipe, steps)
    else:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        try:
            with quanta.distributed.across():
                quantize_sequential(model, recipe, quanta.distributed.shard(steps))
        except quanta.errors.QuantaError as exc:
            print(f"refused: {exc}")
            sys.exit(3)
        finally:
            dist.destroy_process_group()
    quanta.save(model, out)
    """
)


def _launch(tmp_path: Path, world: int, recipe: str) -> list[subprocess.CompletedProcess[str]]:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    tag = Path(recipe).stem  # a preset name, or a recipe JSON file's name
    store = tmp_path / f"store-{tag}-{world}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(tmp_path / f"{tag}-{world}-{r}"),
                str(r),
                str(world),
                str(store),
                recipe,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


# awq: smoothquant's statistics too; w8a8: static activation ranges (minmax observers)
@pytest.mark.parametrize("recipe", ["w3a16-g16-gptq", "w4a16-g32-awq_gptq", "w8a8"])
def test_two_gloo_ranks_give_the_single_process_codes(tmp_path: Path, recipe: str) -> None:
    single = _launch(tmp_path, 1, recipe)
    assert single[0].returncode == 0, single[0].stderr[-2000:]
    ranks = _launch(tmp_path, 2, recipe)
    assert all(r.returncode == 0 for r in ranks), [r.stderr[-2000:] for r in ranks]
    reference = (tmp_path / f"{recipe}-1-0" / "model.safetensors").read_bytes()
    for rank in range(2):  # every rank ends with the same model, and it is the one-process model
        assert (tmp_path / f"{recipe}-2-{rank}" / "model.safetensors").read_bytes() == reference


def test_statistics_not_combined_across_ranks_are_refused(tmp_path: Path) -> None:
    recipe = quanta.Recipe(
        rules=(quanta.Rule(weight=quanta.QScheme.parse("int8:ch"), activation=quanta.QScheme.parse("int8:obs=mse")),)
    )
    path = tmp_path / "mse.json"
    path.write_text(json.dumps(recipe.to_dict()))
    ranks = _launch(tmp_path, 2, str(path))  # the MSE observer's sample of the data is per rank
    assert [r.returncode for r in ranks] == [3, 3]
    assert all("not combined across processes" in r.stdout for r in ranks)


def _tree(values: list[torch.Tensor], lo: int, hi: int) -> torch.Tensor:
    if hi - lo == 1:
        return values[lo]
    mid = tree_split(lo, hi)
    return _tree(values, lo, mid) + _tree(values, mid, hi)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_streamed_tree_sum_is_the_recursive_tree_sum(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    values = [
        torch.randn(3, generator=g, dtype=torch.float64) * 10.0 ** float(torch.randint(-8, 8, (1,), generator=g))
        for _ in range(n)
    ]
    streamed = TreeSum(0, n, n)
    for v in values:
        streamed.add(v)
    assert torch.equal(streamed.result(), _tree(values, 0, n))  # the same additions: the same bits
    if n > 1:  # a rank's subtree sum is that subtree's node, whichever process computes it
        mid = tree_split(0, n)
        left, right = TreeSum(0, mid, n), TreeSum(mid, n, n)
        for i, v in enumerate(values):
            (left if i < mid else right).add(v)
        assert torch.equal(left.result() + right.result(), _tree(values, 0, n))


def test_tree_sum_misuse_is_named() -> None:
    with pytest.raises(QuantaError, match="0 <= lo < hi <= n"):
        TreeSum(2, 2, 4)
    partial = TreeSum(0, 2, 2)
    partial.add(torch.ones(1))
    with pytest.raises(QuantaError, match="got 1 of them"):
        partial.result()
