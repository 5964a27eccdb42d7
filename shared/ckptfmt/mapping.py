"""Tensor/pipeline-parallel mapping: ranks, coordinates and the layers each pipeline stage owns."""

from dataclasses import dataclass

MAX_RANKS = 4096  # bounds the rank files a config can make a tool open or plan


@dataclass(frozen=True)
class Mapping:
    """``world_size = tp_size * pp_size``; rank = tp_rank + tp_size * pp_rank (TensorRT-LLM's order)."""

    world_size: int = 1
    tp_size: int = 1
    pp_size: int = 1

    def rank(self, tp_rank: int, pp_rank: int) -> int:
        return tp_rank + self.tp_size * pp_rank

    def coords(self, rank: int) -> tuple[int, int]:
        """(tp_rank, pp_rank) of a global rank."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world_size {self.world_size}")
        return rank % self.tp_size, rank // self.tp_size

    def tp_rank(self, rank: int) -> int:
        return self.coords(rank)[0]

    def pp_rank(self, rank: int) -> int:
        return self.coords(rank)[1]

    def is_first_stage(self, rank: int) -> bool:
        return self.pp_rank(rank) == 0

    def is_last_stage(self, rank: int) -> bool:
        return self.pp_rank(rank) == self.pp_size - 1

    def pp_layers(self, num_layers: int, pp_rank: int) -> range:
        """Global indices of the layers owned by ``pp_rank`` (in order; earlier stages take the remainder)."""
        base, extra = divmod(num_layers, self.pp_size)
        start = pp_rank * base + min(pp_rank, extra)
        return range(start, start + base + (1 if pp_rank < extra else 0))

    def layers_of_rank(self, num_layers: int, rank: int) -> range:
        return self.pp_layers(num_layers, self.pp_rank(rank))

    def problems(self, num_layers: int | None = None) -> list[str]:
        """Consistency problems, each prefixed with its field path."""
        out = []
        for name in ("world_size", "tp_size", "pp_size"):
            if not 1 <= getattr(self, name) <= MAX_RANKS:
                out.append(f"mapping.{name}: must lie in [1, {MAX_RANKS}] (got {getattr(self, name)})")
        if self.world_size != self.tp_size * self.pp_size:
            out.append(
                f"mapping.world_size: must equal tp_size * pp_size "
                f"({self.tp_size} * {self.pp_size} = {self.tp_size * self.pp_size}), got {self.world_size}"
            )
        if num_layers is not None and self.pp_size > num_layers >= 1:
            out.append(f"mapping.pp_size: {self.pp_size} stages for only {num_layers} layers")
        return out
