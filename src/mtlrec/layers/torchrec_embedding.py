"""The TorchRec embedding backend (``embedding_backend: torchrec``; the optional extra ``mtlrec[torchrec]``).

:class:`TorchRecEmbedding` has the interface of :class:`~mtlrec.layers.embedding.FusedEmbedding` (a batch in,
field embeddings ``E (B, F, dim)`` out, fields in :attr:`FeatureLayout.field_names` order) but keeps one table per
categorical and multi-valued field in a TorchRec ``EmbeddingBagCollection``, fed as a ``KeyedJaggedTensor``:
single-valued fields are bags of one id (id 0, the out-of-vocabulary row, is looked up as in the fused table),
multi-valued fields are bags of their non-padding ids pooled by ``mean`` or ``sum`` (an empty bag gives zeros,
as the fused table). Under several processes :meth:`shard` hands the collection to TorchRec's
``DistributedModelParallel`` with a table-wise, row-wise or planner-chosen plan, so tables larger than one device
are split over the ranks; the plan is kept in :attr:`plan_text` for the run record.
"""

from __future__ import annotations

import torch
from torch import nn

from mtlrec.data.batches import Batch
from mtlrec.data.layout import FeatureLayout
from mtlrec.errors import UserError

PLANS = ("auto", "table_wise", "row_wise", "column_wise")


def require_torchrec():
    """The ``torchrec`` module, or a :class:`UserError` saying how to install the extra."""
    try:
        import torchrec
    except Exception as exc:  # ImportError, or fbgemm failing to load against this torch
        raise UserError(
            "embedding_backend 'torchrec' needs the torchrec extra: pip install -c constraints.txt 'mtlrec[torchrec]' "
            f"&& pip install --no-deps -c constraints.txt torchrec==1.8.0 ({type(exc).__name__}: {exc})"
        ) from None
    return torchrec


class TorchRecEmbedding(nn.Module):
    """Field embeddings from a TorchRec ``EmbeddingBagCollection``, one table per sparse field (see the module
    docstring). ``numeric`` fields are embedded as ``x_j v_j`` (dense, replicated) unless ``embed_numeric=False``."""

    def __init__(self, layout: FeatureLayout, dim: int, *, init_std: float = 1e-2, embed_numeric: bool = True) -> None:
        super().__init__()
        torchrec = require_torchrec()
        self.layout = layout
        self.dim = dim
        self.embed_numeric = embed_numeric
        self.features = [n for n, _ in layout.categorical] + [m.name for m in layout.multi_valued]
        sizes = [v for _, v in layout.categorical] + [m.vocab_size for m in layout.multi_valued]
        pools = ["sum"] * len(layout.categorical) + [m.pooling for m in layout.multi_valued]
        self.tables = [
            torchrec.EmbeddingBagConfig(
                name=f"t_{f}",
                embedding_dim=dim,
                num_embeddings=max(1, n),
                feature_names=[f],
                pooling=torchrec.PoolingType.MEAN if p == "mean" else torchrec.PoolingType.SUM,
            )
            for f, n, p in zip(self.features, sizes, pools, strict=True)
        ]
        self.ebc = torchrec.EmbeddingBagCollection(tables=self.tables, device=torch.device("cpu"))
        with torch.no_grad():
            for t in self.ebc.embedding_bags.values():
                t.weight.normal_(std=init_std)
        self.numeric = (
            nn.Parameter(torch.randn(len(layout.numeric), dim) * init_std) if layout.numeric and embed_numeric else None
        )
        self.plan_text: str | None = None
        self._grad_scale = 1.0

    @property
    def num_fields(self) -> int:
        return len(self.features) + (len(self.layout.numeric) if self.embed_numeric else 0)

    def kjt(self, batch: Batch):
        """The batch's sparse fields as a ``KeyedJaggedTensor`` (key-major values, one length per row and key)."""
        from torchrec import KeyedJaggedTensor

        values, lengths = [], []
        n_cat = len(self.layout.categorical)
        if n_cat:
            values.append(batch.cat.t().reshape(-1))
            lengths.append(torch.ones(n_cat * len(batch), dtype=torch.long, device=batch.cat.device))
        for m in self.layout.multi_valued:
            ids = batch.multi[m.name]
            keep = ids > 0
            values.append(ids[keep])  # row-major: each row's ids together, rows in order
            lengths.append(keep.sum(1))
        return KeyedJaggedTensor(keys=self.features, values=torch.cat(values), lengths=torch.cat(lengths))

    def forward(self, batch: Batch) -> torch.Tensor:
        parts = []
        if self.features:
            out = self.ebc(self.kjt(batch))
            if hasattr(out, "wait"):
                out = out.wait()
            d = out.to_dict()
            e = torch.stack([d[f] for f in self.features], 1)
            parts.append(_ScaleGrad.apply(e, self._grad_scale) if self._grad_scale != 1.0 else e)
        if self.numeric is not None:
            parts.append(batch.num.unsqueeze(-1) * self.numeric)
        if not parts:
            return batch.num.new_zeros(batch.num.shape[0], 0, self.dim)
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    @torch.no_grad()
    def load_fused(self, fused) -> None:  # noqa: ANN001 - a FusedEmbedding
        """Copy a :class:`~mtlrec.layers.embedding.FusedEmbedding`'s rows (and numeric vectors) into the tables, so
        both backends start from the same weights (before :meth:`shard`)."""
        w = fused.table.weight
        offsets = torch.cat([fused.cat_offsets, fused.multi_offsets]).tolist()
        for off, t in zip(offsets, self.tables, strict=True):
            self.ebc.embedding_bags[t.name].weight.copy_(w[off : off + t.num_embeddings])
        if self.numeric is not None and fused.numeric is not None:
            self.numeric.copy_(fused.numeric)

    def shard(self, plan: str = "auto", device: torch.device | None = None, fused_params: dict | None = None) -> str:
        """Shard the tables over the process group with ``DistributedModelParallel``: ``table_wise`` (each table on
        one rank), ``row_wise`` (every table split by rows over the ranks; TorchRec 1.8 offers it on CUDA only),
        ``column_wise`` (split by embedding columns) or ``auto`` (TorchRec's planner chooses).
        ``fused_params``: the fused optimizer TorchRec applies to the tables in the backward pass (e.g.
        ``{"optimizer": EmbOptimType.ADAM, "learning_rate": 1e-3}``). Returns (and keeps) the plan as text."""
        import torch.distributed as dist
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
        from torchrec.distributed.planner.types import ParameterConstraints

        if plan not in PLANS:
            raise UserError(f"embedding_plan: expected one of {', '.join(PLANS)}, got {plan!r}")
        if not dist.is_initialized():
            raise UserError("embedding_backend 'torchrec': sharding needs several processes (torchrun or --nproc)")
        device = device or torch.device("cpu")
        world = dist.get_world_size()
        full = {k: v.detach().clone() for k, v in self.ebc.state_dict().items()}
        constraints = None
        if plan != "auto":
            constraints = {t.name: ParameterConstraints(sharding_types=[plan]) for t in self.tables}
        compute = "cuda" if device.type == "cuda" else "cpu"
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device=compute), constraints=constraints
        )
        sharders = [EmbeddingBagCollectionSharder(fused_params=fused_params)]
        sharding_plan = planner.collective_plan(self.ebc, sharders, dist.GroupMember.WORLD)
        self.ebc = DistributedModelParallel(self.ebc, device=device, plan=sharding_plan, sharders=sharders)
        load_full_state(self.ebc, full)
        # the sharded tables receive the sum of every rank's gradient; the trainer's scheme (global losses whose
        # backward is N x, then averaged dense gradients) needs 1/N here to give the single-process gradient
        self._grad_scale = 1.0 / world
        self.plan_text = str(sharding_plan)
        return self.plan_text


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        return g * ctx.scale, None


@torch.no_grad()
def load_full_state(module: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy full (unsharded) tables into a sharded module's local shards (table- or row-wise ``ShardedTensor``)."""
    state = module.state_dict()
    for key, value in state.items():
        name = key.removeprefix("module.").removeprefix("_dmp_wrapped_module.")
        src = full.get(name)
        if src is None:
            continue
        if hasattr(value, "local_shards"):
            for shard in value.local_shards():
                r0, c0 = shard.metadata.shard_offsets
                r, c = shard.metadata.shard_sizes
                shard.tensor.copy_(src[r0 : r0 + r, c0 : c0 + c])
        else:
            value.copy_(src)


@torch.no_grad()
def gather_full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every table of a sharded module as one full tensor on every rank (for a checkpoint or a comparison)."""
    import torch.distributed as dist

    out = {}
    for key, value in module.state_dict().items():
        name = key.removeprefix("module.").removeprefix("_dmp_wrapped_module.")
        if not hasattr(value, "local_shards"):
            out[name] = value.detach().clone()
            continue
        full = torch.zeros(value.size(), dtype=value.dtype)
        for shard in value.local_shards():
            r0, c0 = shard.metadata.shard_offsets
            r, c = shard.metadata.shard_sizes
            full[r0 : r0 + r, c0 : c0 + c] = shard.tensor.cpu()
        dist.all_reduce(full)  # each element lives on exactly one rank; the others contribute zeros
        out[name] = full
    return out
