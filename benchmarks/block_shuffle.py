"""Effect of block shuffle on test AUC: the same data, model and seeds trained with a full row shuffle and with
``shuffle: block`` at several block sizes, on a cache whose rows are sorted (clustered by user and item), the
case where block shuffling can hurt.

``python benchmarks/block_shuffle.py`` (a few minutes on 2 cores); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_parser, command_line, markdown_table, run_script, write_results  # noqa: E402

import mtlrec  # noqa: E402
from mtlrec.data.stream import load_stream  # noqa: E402
from mtlrec.schema import CategoricalFeature, NumericFeature, Schema, TaskSpec  # noqa: E402
from mtlrec.train.trainer import TrainConfig, Trainer, evaluate  # noqa: E402


def make_rows(n: int, seed: int = 0) -> pa.Table:
    """Click/purchase labels that depend on user, item and a numeric feature; rows sorted by user then item."""
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, 2000, n), rng.integers(0, 500, n)
    price = rng.lognormal(0, 1, n)
    u_eff, i_eff = rng.normal(0, 1, 2000), rng.normal(0, 1, 500)
    score = u_eff[user] + i_eff[item] - 0.4 * np.log(price) + rng.normal(0, 1, n)
    click = (score > 0.3).astype(np.int64)
    purchase = ((score > 1.2) & (click == 1)).astype(np.int64)
    t = pa.table({"user": user, "item": item, "price": price, "click": click, "purchase": purchase})
    return t.take(np.lexsort((item, user)))


def main() -> None:
    p = base_parser("block_shuffle", __doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--blocks", default="0,256,4096,16384", help="block sizes; 0 = full row shuffle")
    args = p.parse_args()
    seeds = 2 if args.quick else min(args.seeds, 3)
    rows = 20_000 if args.quick else args.rows
    torch.set_num_threads(2)
    schema = Schema(
        [CategoricalFeature("user"), CategoricalFeature("item"), NumericFeature("price", transform="log")],
        [TaskSpec("click"), TaskSpec("purchase", mask="click")],
    )
    work = Path(tempfile.mkdtemp(prefix="mtlrec-block-"))
    pq.write_table(make_rows(rows), work / "d.parquet")
    out = []
    for block in [int(b) for b in args.blocks.split(",")]:
        for seed in range(seeds):
            kw = {"shuffle": "block", "shuffle_block": block} if block else {}
            data = load_stream(schema, work / "d.parquet", cache_dir=work / "c", split=[0.8, 0.1, 0.1], **kw)
            model = mtlrec.create_model("mmoe", data, num_experts=4, expert_hidden=[32], embedding_dim=8)
            cfg = TrainConfig(epochs=3, batch_size=512, lr=2e-3, seed=seed, progress=False, patience=5)
            tr = Trainer(model, cfg, out_dir=work / f"run_{block}_{seed}")
            tr.fit(data.train, data.valid)
            tr.load_best()
            m = evaluate(model, data.test)
            out.append(
                {"block": block, "seed": seed, "click_auc": m["click"]["auc"], "purchase_auc": m["purchase"]["auc"]}
            )
            print(out[-1], flush=True)
    rows_out = []
    for block in sorted({r["block"] for r in out}):
        for task in ("click", "purchase"):
            v = [r[f"{task}_auc"] for r in out if r["block"] == block]
            rows_out.append({
                "model": "mmoe", "shuffle": "rows" if block == 0 else f"block {block}", "task": task, "metric": "auc",
                "split": "test", "mean": float(np.mean(v)), "std": float(np.std(v)), "values": v,
                "seeds": list(range(seeds)),
            })  # fmt: skip
    print(markdown_table(rows_out, ["shuffle", "task", "mean", "std"]))
    write_results("block_shuffle", command_line(), rows_out, args.quick, args.out, extra={"rows": rows})


if __name__ == "__main__":
    run_script(main)
