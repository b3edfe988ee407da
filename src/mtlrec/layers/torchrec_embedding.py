"""The TorchRec embedding backend (``embedding_backend: torchrec``; the optional extra ``mtlrec[torchrec]``).

:class:`TorchRecEmbedding` has the interface of :class:`~mtlrec.layers.embedding.FusedEmbedding` (a batch in,
field embeddings ``E (B, F, dim)`` out, fields in :attr:`FeatureLayout.field_names` order) but keeps one table per
categorical and multi-valued field in a TorchRec ``EmbeddingBagCollection``, fed as a ``KeyedJaggedTensor``:
single-valued fields are bags of one id (id 0, the out-of-vocabulary row, is looked up as in the fused table),
multi-valued fields are bags of their non-padding ids pooled by ``mean`` or ``sum`` (an empty bag gives zeros,
as the fused table). Under several processes the trainer calls :meth:`shard`, which hands the collection to
TorchRec's ``DistributedModelParallel`` with a table-wise, column-wise, row-wise (CUDA) or planner-chosen plan, so
tables larger than one device are split over the ranks, updated by TorchRec's fused optimizer in the backward pass
(:func:`fused_params`); the plan is kept in :attr:`plan` for the run record. :func:`full_state_dict` and
:func:`load_full_state_dict` read and write the model in the unsharded layout (a checkpoint of N processes loads in
one), :meth:`TorchRecEmbedding.optimizer_state` the fused optimizer's state likewise.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from mtlrec.data.batches import Batch
from mtlrec.data.layout import FeatureLayout
from mtlrec.errors import SettingsError, UserError

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
        self.plan: dict[str, dict] | None = None  # per table, once sharded (:meth:`shard`)
        self.plan_text: str | None = None
        self._grad_scale = 1.0

    def num_table_parameters(self) -> int:
        """Rows x dimension summed over the tables (what a sharded layer holds over all ranks together)."""
        return sum(t.num_embeddings * t.embedding_dim for t in self.tables)

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

    @torch.no_grad()
    def to_fused(self):  # noqa: ANN201 - a FusedEmbedding
        """The same embeddings from one :class:`~mtlrec.layers.embedding.FusedEmbedding` holding these rows (the
        reverse of :meth:`load_fused`), for export: TorchRec's jagged lookups do not trace into a static graph."""
        from mtlrec.layers.embedding import FusedEmbedding

        if self.sharded:
            raise UserError("to_fused: the tables are sharded; load the run's checkpoint in one process first")
        fused = FusedEmbedding(self.layout, self.dim, sparse=False, embed_numeric=self.embed_numeric)
        offsets = torch.cat([fused.cat_offsets, fused.multi_offsets]).tolist()
        w = fused.table.weight
        for off, t in zip(offsets, self.tables, strict=True):
            rows = self.ebc.embedding_bags[t.name].weight
            n = min(rows.shape[0], w.shape[0] - off)
            w[off : off + n].copy_(rows[:n])
        if self.numeric is not None:
            fused.numeric.copy_(self.numeric)
        return fused

    @property
    def sharded(self) -> bool:
        """True once :meth:`shard` handed the tables to ``DistributedModelParallel``."""
        return self.plan is not None

    def table_parameters(self) -> list[nn.Parameter]:
        """The unsharded tables (the trainer's embedding optimizer updates them); none once sharded, where
        TorchRec's fused optimizer updates them in the backward pass."""
        return [] if self.sharded else [b.weight for b in self.ebc.embedding_bags.values()]

    def shard(self, plan: str = "table_wise", device: torch.device | None = None, fused_params: dict | None = None):
        """Shard the tables over the process group with ``DistributedModelParallel``: ``table_wise`` (each table on
        one rank), ``row_wise`` (every table split by rows over the ranks; TorchRec 1.8 offers it on CUDA only),
        ``column_wise`` (split by embedding columns) or ``auto`` (TorchRec's planner chooses among the sharding
        types with a fused kernel). ``fused_params``: the fused optimizer TorchRec applies to the tables in the
        backward pass (:func:`fused_params`). Returns (and keeps in :attr:`plan`) the plan per table:
        ``{table: {"sharding_type", "compute_kernel", "ranks"}}``; :attr:`plan_text` is TorchRec's own table."""
        import torch.distributed as dist
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
        from torchrec.distributed.planner.types import ParameterConstraints

        if not dist.is_initialized():
            raise UserError("embedding_backend 'torchrec': sharding needs several processes (torchrun or --nproc)")
        device = device or torch.device("cpu")
        compute = "cuda" if device.type == "cuda" else "cpu"
        sharder = EmbeddingBagCollectionSharder(fused_params=fused_params)
        types = sharding_types(plan, sharder.sharding_types(compute), compute)
        world = dist.get_world_size()
        full = {k: v.detach().clone() for k, v in self.ebc.state_dict().items()}
        constraints = {
            t.name: ParameterConstraints(sharding_types=types, compute_kernels=["fused"]) for t in self.tables
        }
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device=compute), constraints=constraints
        )
        sharding_plan = planner.collective_plan(self.ebc, [sharder], dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(self.ebc, device=device, plan=sharding_plan, sharders=[sharder])
        # kept outside the module tree: DistributedModelParallel's state-dict hook rewrites every key its parent
        # collected before it, and the model's state dict is to keep the unsharded layout (full_state_dict)
        del self.ebc
        object.__setattr__(self, "ebc", dmp)
        load_full_state(self.ebc, full)  # DistributedModelParallel initialises the shards afresh
        # the sharded tables receive the sum of every rank's gradient; the trainer's scheme (global losses whose
        # backward is N x, then averaged dense gradients) needs 1/N here to give the single-process gradient
        self._grad_scale = 1.0 / world
        self.plan_text = str(sharding_plan)
        self.plan = plan_record(sharding_plan)
        return self.plan

    def train(self, mode: bool = True) -> TorchRecEmbedding:
        super().train(mode)
        if self.sharded:
            self.ebc.train(mode)  # not a submodule once sharded
        return self

    def optimizer_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The fused optimizer's state of every sharded table as full tensors, ``{parameter: {name: tensor}}``
        (e.g. Adagrad's ``t_user.momentum1``), on every rank; a collective call (every rank calls it)."""
        import torch.distributed as dist

        live = self.ebc.fused_optimizer.state_dict()["state"]
        local = {(p, n): v for p, states in live.items() for n, v in states.items()}
        # a rank lists only the tables it holds: agree on the union of names, sizes and dtypes first
        specs: list = [None] * dist.get_world_size()
        dist.all_gather_object(specs, [(p, n, _global_size(v), v.dtype) for (p, n), v in local.items()])
        out: dict[str, dict[str, torch.Tensor]] = {}
        for p, n, size, dtype in sorted({s for spec in specs for s in spec}, key=lambda s: s[:2]):
            full = torch.zeros(size, dtype=dtype)
            value = local.get((p, n))
            if value is not None:
                _gather_local(full, value)
            dist.all_reduce(full)  # each element is held by one rank (the others add zeros)
            out.setdefault(p, {})[n] = full
        return out

    @torch.no_grad()
    def load_optimizer_state(self, state: dict[str, dict[str, torch.Tensor]], step: int | None = None) -> None:
        """Copy full optimizer state (:meth:`optimizer_state`) into this rank's shards of the fused optimizer;
        ``step``: the optimisation steps done, the fused kernel's step count (Adam's bias correction)."""
        optimizer = self.ebc.fused_optimizer
        if step is not None and hasattr(optimizer, "set_optimizer_step"):
            optimizer.set_optimizer_step(step)
        for p, states in optimizer.state_dict()["state"].items():
            for n, value in states.items():
                src = state.get(p, {}).get(n)
                if src is None:
                    raise KeyError(f"the checkpoint has no fused optimizer state {p}/{n}")
                _scatter_local(value, src)


def sharding_types(plan: str, offered: list[str], compute: str) -> list[str]:
    """The sharding types the planner may choose for ``train.embedding_plan`` ``plan``, among those TorchRec's
    sharder ``offered`` on ``compute`` (``cpu``/``cuda``); data-parallel tables are left out (they would need a
    dense optimizer of their own). :class:`UserError` for a plan TorchRec does not offer there."""
    if plan not in PLANS:
        raise UserError(f"train.embedding_plan: expected one of {', '.join(PLANS)}, got {plan!r}")
    fused = [t for t in offered if t != "data_parallel"]
    if plan == "auto":
        return fused
    if plan not in fused:
        raise SettingsError(
            f"train.embedding_plan {plan!r}: TorchRec's EmbeddingBagCollectionSharder does not offer {plan} sharding "
            f"on {compute} (it offers {', '.join(fused)}); choose one of those"
            + (" or train on CUDA" if compute == "cpu" else "")
        )
    return [plan]


def fused_params(kind: str, lr: float, eps: float, compute: str) -> dict:
    """TorchRec's fused optimizer for the sharded tables, matching the trainer's embedding optimizer ``kind``:
    ``adagrad``: fbgemm's exact Adagrad (the update of ``torch.optim.Adagrad``, on the rows a batch touches);
    ``adam``: fbgemm's Adam (lazy on the touched rows, as :class:`~mtlrec.train.optim.RowwiseAdam`), which fbgemm
    implements on CUDA only: :class:`UserError` on CPU."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    if kind == "adagrad":
        return {"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": lr, "eps": eps}
    if kind == "adam":
        if compute != "cuda":
            raise SettingsError(
                "train.embedding_optimizer 'adam': fbgemm's CPU kernel for sharded TorchRec tables has no Adam (it "
                "offers exact Adagrad, row-wise Adagrad and SGD); set train.embedding_optimizer=adagrad (the fused "
                "table then trains with the same Adagrad) or shard on CUDA"
            )
        return {
            "optimizer": EmbOptimType.ADAM,
            "learning_rate": lr,
            "eps": eps,
            "beta1": 0.9,
            "beta2": 0.999,
            "weight_decay": 0.0,
        }
    raise UserError(f"train.embedding_optimizer: expected 'adam' or 'adagrad', got {kind!r}")


def plan_record(sharding_plan) -> dict[str, dict]:  # noqa: ANN001 - a torchrec ShardingPlan
    """Per table of a TorchRec ``ShardingPlan``: its sharding type, compute kernel and the rank of each shard."""
    return {
        table: {"sharding_type": ps.sharding_type, "compute_kernel": ps.compute_kernel, "ranks": list(ps.ranks or [])}
        for module_plan in sharding_plan.plan.values()
        for table, ps in module_plan.items()
    }


def sharded_embeddings(module: nn.Module) -> list[tuple[str, TorchRecEmbedding]]:
    """``(name, layer)`` of every sharded :class:`TorchRecEmbedding` in ``module``."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, TorchRecEmbedding) and m.sharded]


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` in the unsharded layout: every sharded table gathered into one full tensor under the
    key an unsharded model has, so the checkpoint loads in any number of processes. A collective call when a table
    is sharded (every rank calls it); ``module.state_dict()`` otherwise."""
    state = module.state_dict()
    for name, layer in sharded_embeddings(module):
        prefix = f"{name}." if name else ""
        tables = {f"{prefix}ebc.{k}": v for k, v in gather_full_state(layer.ebc).items()}
        keys = list(state)
        at = next((i for i, k in enumerate(keys) if k.startswith(prefix)), len(keys))  # where an unsharded layer's are
        state = {**{k: state[k] for k in keys[:at]}, **tables, **{k: state[k] for k in keys[at:]}}
    return state


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``module.load_state_dict(state)`` (strict) for a state in the unsharded layout: each rank copies its shards
    of the full tables. ``RuntimeError`` naming the keys that are missing, unexpected or of another shape."""
    rest = dict(state)
    for name, layer in sharded_embeddings(module):
        prefix = f"{name}.ebc." if name else "ebc."
        tables = {k[len(prefix) :]: rest.pop(k) for k in list(rest) if k.startswith(prefix)}
        expected = {_plain_key(k) for k in layer.ebc.state_dict()}
        if set(tables) != expected:
            wrong = sorted(set(tables) ^ expected)
            raise RuntimeError(f"embedding tables missing or unexpected: {', '.join(prefix + k for k in wrong)}")
        load_full_state(layer.ebc, tables)
    module.load_state_dict(rest)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        return g * ctx.scale, None


def _plain_key(key: str) -> str:
    return key.removeprefix("module.").removeprefix("_dmp_wrapped_module.")


def _global_size(value) -> tuple[int, ...]:  # noqa: ANN001 - a ShardedTensor or a tensor
    """The full shape; quiet about torch's deprecation of ``ShardedTensor``, which TorchRec 1.8 still returns."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecating ShardedTensor", category=FutureWarning)
        return tuple(value.size())


def _shard_slices(shard) -> tuple[slice, ...]:  # noqa: ANN001 - a torch.distributed Shard
    return tuple(slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes, strict=True))


def _scatter_local(value, src: torch.Tensor) -> None:  # noqa: ANN001 - a ShardedTensor or a tensor
    """Copy this rank's part of the full tensor ``src`` into ``value`` (a ``ShardedTensor``'s local shards)."""
    if _global_size(value) != tuple(src.shape):
        raise RuntimeError(f"shape {tuple(src.shape)} in the checkpoint, {_global_size(value)} in the model")
    if hasattr(value, "local_shards"):
        for shard in value.local_shards():
            shard.tensor.copy_(src[_shard_slices(shard)])
    else:
        value.copy_(src)


def _gather_local(full: torch.Tensor, value) -> None:  # noqa: ANN001 - a ShardedTensor or a tensor
    """Write this rank's shards of ``value`` into the zero-filled full tensor ``full``."""
    if hasattr(value, "local_shards"):
        for shard in value.local_shards():
            full[_shard_slices(shard)] = shard.tensor.detach().cpu()
    else:
        full.copy_(value.detach().cpu())


@torch.no_grad()
def load_full_state(module: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy full (unsharded) tables into a sharded module's local shards (table-, column- or row-wise
    ``ShardedTensor``)."""
    for key, value in module.state_dict().items():
        src = full.get(_plain_key(key))
        if src is not None:
            _scatter_local(value, src)


@torch.no_grad()
def gather_full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every table of a sharded module as one full tensor on every rank (for a checkpoint or a comparison); a
    collective call."""
    import torch.distributed as dist

    out = {}
    for key, value in module.state_dict().items():
        if not hasattr(value, "local_shards"):
            out[_plain_key(key)] = value.detach().clone()
            continue
        full = torch.zeros(_global_size(value), dtype=value.dtype)
        _gather_local(full, value)
        dist.all_reduce(full)  # each element lives on exactly one rank; the others contribute zeros
        out[_plain_key(key)] = full
    return out
