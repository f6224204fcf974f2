"""Which process holds which slab: the split of a volume over a process group.

A :class:`SpatialSplit` cuts one or more spatial axes of a volume into equal slabs, one per
process of a ``torch.distributed`` group (the *space* group), laid out row-major over a grid
(``grid[0]`` processes along ``axes[0]``, ...). An optional *data* group holds replicas that
see different samples (data parallelism): together a 2D mesh ``data x space``.

Everything is PyTorch's own: the groups come from ``torch.distributed`` (or a
``DeviceMesh``), the collectives are ``all_reduce`` / ``all_gather``; this module only
computes coordinates, neighbours and slices, and validates sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from ..wavelets import check_dim

__all__ = ["AXIS_NAMES", "SpatialSplit", "init_spatial", "nearest_valid_split"]

AXIS_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def nearest_valid_split(size: int, parts: int, multiple: int) -> tuple[int, list[int]]:
    """For an axis of ``size`` cut into ``parts`` slabs that must each be a multiple of
    ``multiple``: the nearest valid axis size for ``parts`` slabs, and the numbers of slabs
    that work for ``size`` as it is (closest to ``parts`` first)."""
    factor = parts * multiple
    down = (size // factor) * factor
    up = down + factor
    near = up if down == 0 or size - down >= up - size else down
    ok = [p for p in _divisors(size) if (size // p) % multiple == 0] if size % multiple == 0 else []
    ok.sort(key=lambda p: (abs(p - parts), p))
    return near, ok


@dataclass
class SpatialSplit:
    """A volume split in space over the processes of ``group``.

    Args:
        dim: number of spatial axes of the volume (2 or 3; 1 works too).
        axes: the split spatial axes, 0-based among the spatial axes (``0`` is ``D`` in 3D).
        grid: processes along each split axis; their product is the size of ``group``.
        group: the space process group (``None``: the default, whole world).
        data_group: optional data-parallel group (replicas holding the same slab of other
            samples); gradients are averaged over it by :func:`~fhcnn.spatial.reduce_gradients`.

    Raises:
        ValueError: bad axes or grid, or a grid that does not match the group size.

    Example (under ``torchrun --nproc-per-node 2``)::

        split = SpatialSplit(dim=3, axes=(0,), grid=(2,))
        x_local = split.scatter(x, multiple=4)     # (N, C, D/2, H, W)
    """

    dim: int
    axes: tuple[int, ...]
    grid: tuple[int, ...]
    group: dist.ProcessGroup | None = None
    data_group: dist.ProcessGroup | None = None
    rank: int = field(init=False)
    coords: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.axes, self.grid = tuple(int(a) for a in self.axes), tuple(int(g) for g in self.grid)
        check_dim(self.dim)
        if not self.axes or len(set(self.axes)) != len(self.axes) or any(
                not 0 <= a < self.dim for a in self.axes):
            raise ValueError(f"axes must be distinct spatial axes in 0..{self.dim - 1}, got {self.axes}")
        if len(self.grid) != len(self.axes) or any(g < 1 for g in self.grid):
            raise ValueError(f"grid must give a positive number of processes for each of the axes "
                             f"{self.axes}, got {self.grid}")
        size = dist.get_world_size(self.group) if dist.is_initialized() else 1
        if math.prod(self.grid) != size:
            raise ValueError(f"grid {self.grid} needs {math.prod(self.grid)} processes, but the space "
                             f"group has {size}")
        self.rank = dist.get_rank(self.group) if dist.is_initialized() else 0
        coords, r = [], self.rank
        for g in reversed(self.grid):
            coords.append(r % g)
            r //= g
        self.coords = tuple(reversed(coords))

    def __deepcopy__(self, memo: dict) -> SpatialSplit:
        # a split names process groups, which cannot be copied: copies of a split module share it
        return self

    @classmethod
    def from_mesh(cls, mesh: object, dim: int, axes: Sequence[int], grid: Sequence[int],
                  space: str = "space", data: str | None = None) -> SpatialSplit:
        """The split on the ``space`` axis of a ``DeviceMesh`` (and, with ``data``, the data-parallel
        groups on that mesh axis)."""
        return cls(dim, tuple(axes), tuple(grid), group=mesh.get_group(space),  # type: ignore[attr-defined]
                   data_group=mesh.get_group(data) if data is not None else None)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ layout
    @property
    def size(self) -> int:
        """Processes in the space group."""
        return math.prod(self.grid)

    @property
    def data_size(self) -> int:
        return dist.get_world_size(self.data_group) if self.data_group is not None else 1

    @property
    def data_rank(self) -> int:
        """This process's replica index in the data group (0 without one)."""
        return dist.get_rank(self.data_group) if self.data_group is not None else 0

    def axis_name(self, axis: int) -> str:
        return AXIS_NAMES[self.dim][axis]

    def split_index(self, tensor_dim: int) -> int | None:
        """Index into ``axes`` of tensor dimension ``tensor_dim`` (``2 + spatial axis``), or None."""
        a = tensor_dim - 2
        return self.axes.index(a) if a in self.axes else None

    def rank_at(self, coords: Sequence[int]) -> int:
        """Group rank of the process at grid ``coords``."""
        r = 0
        for c, g in zip(coords, self.grid):
            r = r * g + c
        return r

    def neighbour(self, i: int, step: int, periodic: bool) -> int | None:
        """Group rank of the neighbour ``step`` (+-1) along ``axes[i]``; ``None`` past a global
        end unless ``periodic``."""
        c = list(self.coords)
        c[i] += step
        if not 0 <= c[i] < self.grid[i]:
            if not periodic:
                return None
            c[i] %= self.grid[i]
        return self.rank_at(c)

    def global_rank(self, group_rank: int) -> int:
        return dist.get_global_rank(self.group, group_rank) if self.group is not None else group_rank

    # -------------------------------------------------------------- validation
    def check(self, spatial: Sequence[int], multiple: int = 1, what: str = "volume") -> None:
        """Raise unless every split axis of ``spatial`` (the *global* spatial sizes) cuts into
        ``grid`` equal slabs, each a multiple of ``multiple`` (``2**coarsenings``).

        Raises:
            ValueError: naming the axis, the sizes, the nearest valid size and the numbers of
                slabs that would work.
        """
        spatial = tuple(int(s) for s in spatial)
        if len(spatial) != self.dim:
            raise ValueError(f"{what} has {len(spatial)} spatial axes {spatial}, the split expects {self.dim}")
        for i, a in enumerate(self.axes):
            size, parts = spatial[a], self.grid[i]
            if size % (parts * multiple) == 0 and size > 0:
                continue
            near, ok = nearest_valid_split(size, parts, multiple)
            slab = f"{size}/{parts} = {size / parts:g}"
            alt = (f"; or split this size into {ok[0]} slab(s) (valid: {ok})" if ok else
                   f"; no number of slabs works for this size (it is not a multiple of {multiple})")
            raise ValueError(
                f"{what}: spatial axis {a} ({self.axis_name(a)}) of size {size} cannot be split "
                f"into {parts} slabs: each slab ({slab}) must be a whole multiple of {multiple} "
                f"(2**coarsenings of the network). Nearest valid size for {parts} slabs: {near}{alt}.")

    # ------------------------------------------------------------------ slices
    def local_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        out = list(spatial)
        for i, a in enumerate(self.axes):
            out[a] //= self.grid[i]
        return tuple(out)

    def local_slices(self, spatial: Sequence[int], coords: Sequence[int] | None = None) -> tuple[slice, ...]:
        """Slices of this process's (or ``coords``') slab in a volume of ``spatial`` sizes."""
        coords = self.coords if coords is None else coords
        local = self.local_shape(spatial)
        sl = [slice(None)] * self.dim
        for i, a in enumerate(self.axes):
            sl[a] = slice(coords[i] * local[a], (coords[i] + 1) * local[a])
        return tuple(sl)

    def scatter(self, x: Tensor, multiple: int = 1) -> Tensor:
        """This process's slab (a contiguous copy) of a global ``(N, C, *S)`` tensor that every
        process holds (e.g. generated from the same seed, or read by slab from disk)."""
        self.check(x.shape[2:], multiple, what=f"input {tuple(x.shape)}")
        return x[(slice(None), slice(None)) + tuple(self.local_slices(x.shape[2:]))].contiguous()

    def gather(self, x: Tensor) -> Tensor:
        """The global tensor from every process's slab ``(N, C, *S_local)`` (all-gather; every
        process gets it). For tests and small outputs: it needs memory for the whole volume."""
        if self.size == 1:
            return x.clone()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        spatial = [s * (self.grid[self.axes.index(a)] if a in self.axes else 1)
                   for a, s in enumerate(x.shape[2:])]
        out = x.new_empty(*x.shape[:2], *spatial)
        for r, part in enumerate(parts):
            coords, q = [], r
            for g in reversed(self.grid):
                coords.append(q % g)
                q //= g
            out[(slice(None), slice(None)) + tuple(self.local_slices(spatial, tuple(reversed(coords))))] = part
        return out

    def describe(self) -> str:
        axes = ", ".join(f"{self.axis_name(a)} x{g}" for a, g in zip(self.axes, self.grid))
        return (f"SpatialSplit(dim={self.dim}: {axes}; rank {self.rank} at {self.coords}; "
                f"data replicas {self.data_size})")


def init_spatial(dim: int, axes: Sequence[int], grid: Sequence[int], data: int = 1,
                 timeout: float | None = None) -> SpatialSplit:
    """Lay the whole world out as a ``data x space`` mesh (the default group must be initialized,
    e.g. by ``torchrun`` + ``dist.init_process_group``) and return this process's
    :class:`SpatialSplit`: its space group and, with ``data > 1``, its data group.

    Ranks are laid out row-major: ranks ``d*S .. d*S + S-1`` form replica ``d``'s space group
    (``S = prod(grid)``), so a space group's processes are neighbours in rank order; the data
    group of position ``s`` holds ranks ``s, S + s, 2S + s, ...``. The groups are PyTorch's own
    (``dist.new_subgroups_by_enumeration``, on the default group's backend), the same as a
    ``DeviceMesh`` of shape ``(data, S)`` gives (:meth:`SpatialSplit.from_mesh`).

    ``timeout``: seconds a collective of these groups waits for another process (e.g.
    ``train.peer_timeout``, the default group's own). Without it they wait PyTorch's default of
    30 minutes, whatever timeout the default group was given.

    Raises:
        ValueError: when ``data * prod(grid)`` is not the world size.
    """
    from datetime import timedelta

    space = math.prod(int(g) for g in grid)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if data < 1 or data * space != world:
        raise ValueError(f"data={data} x space grid {tuple(grid)} = {data * space} processes, but the "
                         f"world has {world}")
    if world == 1:
        return SpatialSplit(dim, tuple(axes), tuple(grid))
    wait = timedelta(seconds=float(timeout)) if timeout is not None else None
    rows = [[d * space + s for s in range(space)] for d in range(data)]
    group, _ = dist.new_subgroups_by_enumeration(rows, timeout=wait)
    data_group = None
    if data > 1:
        columns = [[d * space + s for d in range(data)] for s in range(space)]
        data_group, _ = dist.new_subgroups_by_enumeration(columns, timeout=wait)
    return SpatialSplit(dim, tuple(axes), tuple(grid), group=group, data_group=data_group)
