"""Spatial (domain) parallelism: one volume split in space over the processes of a group.

Each process holds one slab of every state; convolutions exchange halos with the
neighbouring slabs (:func:`halo_pad`, one ``autograd.Function`` whose backward is the reverse
exchange with addition), normalization statistics are all-reduced, Haar transitions are
local and the learnable wavelet exchanges one periodic plane. The result is the global
operator: forward, ``inverse`` and every gradient equal the single-process network's on the
whole volume, in all three gradient modes. Communication is ``torch.distributed`` (Gloo on
CPUs, NCCL on GPUs), launched by ``torchrun``; see ``docs/spatial.md``.

Example (``torchrun --nproc-per-node 2 script.py``)::

    dist.init_process_group("gloo")
    split = init_spatial(dim=3, axes=(0,), grid=(2,))      # D cut in 2 slabs
    net = split_module(HyperbolicNetwork(8, units, dim=3), split)
    x = split.scatter(volume, multiple=size_multiple(net))   # this process's slab
    loss_part = net(x).square().sum() / volume.numel()
    loss_part.backward()
    reduce_gradients(net, split)                             # then optimizer.step()
"""

from .convert import global_sum, reduce_gradients, size_multiple, split_module
from .halo import COMM, AllReduceSum, HaloExchange, all_reduce_sum, count_comm, halo_pad
from .layers import SplitLearnableWavelet, SplitSymmetricLayer
from .norm import SplitBatchNorm, SplitGroupNorm, global_mean_std, split_norm
from .split import SpatialSplit, init_spatial, nearest_valid_split

__all__ = [
    "COMM",
    "AllReduceSum",
    "HaloExchange",
    "SpatialSplit",
    "SplitBatchNorm",
    "SplitGroupNorm",
    "SplitLearnableWavelet",
    "SplitSymmetricLayer",
    "all_reduce_sum",
    "count_comm",
    "global_mean_std",
    "global_sum",
    "halo_pad",
    "init_spatial",
    "nearest_valid_split",
    "reduce_gradients",
    "size_multiple",
    "split_module",
    "split_norm",
]
