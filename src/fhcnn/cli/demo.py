"""``fhcnn demo``: a short end-to-end demonstration of the fully reversible network."""

from __future__ import annotations

import argparse
import time

HELP = "train a small fully reversible network for a few steps, invert it, compare memory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    parser.add_argument("--depth", type=int, default=32, help="layers (default 32)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..memory import saved_tensor_bytes
    from ..models import DenseHyperbolicModel

    if args.steps < 1 or args.depth < 4:
        raise ValueError("--steps must be >= 1 and --depth >= 4")
    torch.manual_seed(args.seed)
    n = args.depth // 4
    units = [(n, "down"), (n, "down"), (n, "up"), (args.depth - 3 * n, "up")]
    model = DenseHyperbolicModel(1, 2, 8, units, dim=2)
    print(model.net.describe())
    # a toy task: segment bright discs in noisy 2D images
    g = torch.Generator().manual_seed(args.seed)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.rand(4, 2, generator=g) * 40 + 12
        r = torch.rand(4, generator=g) * 8 + 6
        mask = ((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2) < r[:, None, None] ** 2
        img = mask.float() + 0.5 * torch.randn(4, 64, 64, generator=g)
        return img[:, None], mask.long()

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = batch()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % 5 == 0 or step == args.steps:
            with torch.no_grad():
                pred = model(x).argmax(1)
                inter = ((pred == 1) & (y == 1)).sum().item()
                union = ((pred == 1) | (y == 1)).sum().item()
            print(f"step {step:3d}  loss {loss.item():.4f}  foreground IoU {inter / max(union, 1):.3f}")
    print(f"training: {time.perf_counter() - t0:.1f} s")

    net = model.net
    x = torch.randn(2, 8, 64, 64)
    with torch.no_grad():
        yp, yc = net.forward_pair(x)
        err = ((net.inverse(yp, yc) - x).norm() / x.norm()).item()
    print(f"inverse: ||F^-1(F(x)) - x|| / ||x|| = {err:.2e} over {net.depth} layers and 4 wavelet transitions")
    x = torch.randn(2, 1, 64, 64)
    for mode in (False, "block", True):
        net.reversible = mode
        nbytes, _ = saved_tensor_bytes(lambda: model(x).sum())
        name = {False: "plain autograd", "block": "block-reversible", True: "fully reversible"}[mode]
        print(f"activation memory of one training step, {name:17s}: {nbytes / 2**20:8.2f} MiB")
    return 0
