"""The shape of the encoded inputs, as a model needs it: vocabulary sizes, field order, pooling."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class MultiField:
    name: str
    vocab_size: int
    max_len: int
    pooling: str = "mean"


@dataclass(frozen=True)
class FeatureLayout:
    """Fields in the order a batch carries them.

    ``categorical``: (name, vocabulary size incl. the OOV index 0) for every single-valued categorical field,
    including numeric features bucketised by quantile. ``multi_valued``: list fields (index 0 = padding/OOV).
    ``numeric``: names of the continuous inputs (each embedded as ``value * v_j``).
    """

    categorical: tuple[tuple[str, int], ...] = ()
    multi_valued: tuple[MultiField, ...] = ()
    numeric: tuple[str, ...] = ()
    task_names: tuple[str, ...] = field(default=())

    @property
    def num_fields(self) -> int:
        return len(self.categorical) + len(self.multi_valued) + len(self.numeric)

    @property
    def field_names(self) -> list[str]:
        return [n for n, _ in self.categorical] + [m.name for m in self.multi_valued] + list(self.numeric)

    @property
    def total_vocab(self) -> int:
        return sum(v for _, v in self.categorical) + sum(m.vocab_size for m in self.multi_valued)

    def to_dict(self) -> dict:
        return {
            "categorical": [list(c) for c in self.categorical],
            "multi_valued": [asdict(m) for m in self.multi_valued],
            "numeric": list(self.numeric),
            "task_names": list(self.task_names),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureLayout:
        return cls(
            categorical=tuple((str(n), int(v)) for n, v in d.get("categorical", [])),
            multi_valued=tuple(MultiField(**m) for m in d.get("multi_valued", [])),
            numeric=tuple(d.get("numeric", [])),
            task_names=tuple(d.get("task_names", [])),
        )
