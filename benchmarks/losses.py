"""Benchmark the image similarity losses of ``itk_odereg.losses`` on CPU.

Run with:

    python benchmarks/losses.py                      # 80x96x80 and 160x192x160, all threads
    python benchmarks/losses.py --quick              # 40x48x40 only, no slow references (CI smoke test)
    python benchmarks/losses.py --sizes 80x96x80 --threads 1 --repeats 9
    python benchmarks/losses.py --no-conv3d          # skip the (slow) conv3d-with-ones LNCC reference
    python benchmarks/losses.py --json losses.json

For every metric and image size the table gives the wall time of the loss
alone (``fwd``) and of the loss plus its backward pass with respect to the
moving image (``fwd+bwd``), as the median over ``--repeats`` calls after one
warm-up call (paths slower than a second run at most 3 timed calls), and the
minimum. Inputs are one batch element, one channel, float32: a brain-like
phantom (background, CSF, GM and WM classes with a wavy boundary, box-blurred)
as the fixed image, and the same anatomy shifted by 1.5 voxels, in T1-like
contrast for LNCC and MSE and in T2-like contrast for MI and NGF, as the moving
image.

LNCC is timed in four implementations that differ only in how the local box
sums are formed (window 9 unless ``--window``):

* ``ours``: :func:`itk_odereg.losses.lncc_loss` (in-place running sums and a
  hand-written backward);
* ``conv3d-ones``: five ``conv3d`` calls with a ``ones(1, 1, w, w, w)`` kernel
  and zero padding, then ``cross^2 / (var_f var_m + 1e-5)`` in autograd: what
  the VoxelMorph and NODEO code does;
* ``sep-conv``: the same with three depthwise 1-D ``conv3d`` passes per sum;
* ``cumsum``: the same with zero-padded cumulative-sum differences per axis.

The three references compute the same number (reported as ``|d loss|``
against ``conv3d-ones``); ours differs at the border (windows are clipped, not
zero padded) and in ``eps`` (relative), so its loss is shown but not compared.
``ratio`` is the reference's fwd+bwd median over ours. ``cpu ms`` is the
median CPU time of this process per fwd+bwd call (all its threads): with
``--threads 1`` it is the least sensitive to other processes.

On a shared machine other processes slow the multi-threaded paths: the
``load`` column gives the CPU time other processes took during the timed calls,
in cores (from /proc/stat, Linux only); rows with more than 0.1 are flagged
with ``*`` and should be rerun.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

try:
    from itk_odereg.losses import functional as L
except ImportError:  # run as a script from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from itk_odereg.losses import functional as L

T1 = (0.0, 0.25, 0.55, 0.85)  # background, CSF, GM, WM
T2 = (0.0, 0.95, 0.60, 0.35)
QUICK_SIZE = (40, 48, 40)
DEFAULT_SIZES = ((80, 96, 80), (160, 192, 160))
LOAD_FLAG = 0.1


# --------------------------------------------------------------------------- inputs


def phantom(size: Sequence[int], contrast: Sequence[float], shift: float = 0.0) -> torch.Tensor:
    """Brain-like label phantom, Tensor[1, 1, *size] float32, anatomy shifted by ``shift`` voxels along z."""
    axes = [
        (torch.arange(s, dtype=torch.float32) - (s - 1) / 2 - (shift if k == 0 else 0.0)) / ((s - 1) / 2)
        for k, s in enumerate(size)
    ]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    r = torch.sqrt((z / 0.85) ** 2 + y**2 + (x / 0.9) ** 2)
    lab = torch.zeros(tuple(size), dtype=torch.long)
    lab[r < 0.85] = 1
    lab[r < 0.7] = 2
    lab[r < 0.45 + 0.08 * torch.sin(5 * x) * torch.cos(4 * y) + 0.05 * torch.sin(7 * z)] = 3
    lab[torch.sqrt((z - 0.15) ** 2 + (y + 0.1) ** 2 + (x - 0.05) ** 2) < 0.15] = 1
    img = torch.tensor(contrast, dtype=torch.float32)[lab][None, None]
    return L.box_sum(img, 3) / 27.0


# --------------------------------------------------------------------------- reference LNCC implementations


def _ncc_from_sums(sums: Callable[[torch.Tensor], torch.Tensor], fixed, moving, window: int) -> torch.Tensor:
    """VoxelMorph/NODEO formula: sums with zero padding, ``1 - mean(cross^2 / (var_f var_m + 1e-5))``."""
    win = float(window**3)
    f_sum, m_sum = sums(fixed), sums(moving)
    f2_sum, m2_sum, fm_sum = sums(fixed * fixed), sums(moving * moving), sums(fixed * moving)
    u_f, u_m = f_sum / win, m_sum / win
    cross = fm_sum - u_m * f_sum - u_f * m_sum + u_f * u_m * win
    var_f = f2_sum - 2 * u_f * f_sum + u_f * u_f * win
    var_m = m2_sum - 2 * u_m * m_sum + u_m * u_m * win
    cc = cross * cross / (var_f * var_m + 1e-5)
    return 1 - cc.mean()


def lncc_conv3d_ones(fixed, moving, window: int) -> torch.Tensor:
    kernel = torch.ones(1, 1, window, window, window, dtype=fixed.dtype)
    return _ncc_from_sums(lambda x: F.conv3d(x, kernel, padding=window // 2), fixed, moving, window)


def lncc_separable_conv(fixed, moving, window: int) -> torch.Tensor:
    def sums(x):
        for d in range(3):
            shape, pad = [1, 1, 1], [0, 0, 0]
            shape[d], pad[d] = window, window // 2
            x = F.conv3d(x, torch.ones(1, 1, *shape, dtype=x.dtype), padding=pad)
        return x

    return _ncc_from_sums(sums, fixed, moving, window)


def lncc_cumsum(fixed, moving, window: int) -> torch.Tensor:
    r = window // 2

    def sums(x):
        for d in range(2, 5):
            length = x.shape[d]
            pad = [0, 0] * 3
            pad[2 * (4 - d)], pad[2 * (4 - d) + 1] = r + 1, r
            c = F.pad(x, pad).cumsum(d)
            x = c.narrow(d, 2 * r + 1, length) - c.narrow(d, 0, length)
        return x

    return _ncc_from_sums(sums, fixed, moving, window)


# --------------------------------------------------------------------------- timing


def _busy_jiffies() -> Optional[int]:
    try:
        with open("/proc/stat") as fh:
            parts = fh.readline().split()[1:]
    except OSError:
        return None
    values = [int(v) for v in parts]
    return sum(values) - values[3] - (values[4] if len(values) > 4 else 0)  # minus idle and iowait


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def measure(fn: Callable[[], None], repeats: int) -> dict:
    """Median and minimum wall seconds, median process CPU seconds of ``fn`` after one warm-up call,
    and the other processes' load in cores."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    n = repeats if first < 1.0 else min(repeats, 3)
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    j0, c0, w0 = _busy_jiffies(), _own_cpu(), time.perf_counter()
    times, cpu = [], []
    for _ in range(n):
        t0, p0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - p0)
    j1, c1, w1 = _busy_jiffies(), _own_cpu(), time.perf_counter()
    load = None
    if j0 is not None and j1 is not None:
        load = max(0.0, ((j1 - j0) / hz - (c1 - c0)) / (w1 - w0))
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "cpu_s": statistics.median(cpu),
        "calls": n,
        "load": load,
    }


def bench_metric(loss_fn: Callable, fixed: torch.Tensor, moving: torch.Tensor, repeats: int) -> dict:
    leaf = moving.detach().clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            loss_fn(fixed, moving)

    def fwd_bwd():
        leaf.grad = None
        loss_fn(fixed, leaf).backward()

    value = float(loss_fn(fixed, moving))
    return {"loss": value, "fwd": measure(fwd, repeats), "fwd_bwd": measure(fwd_bwd, repeats)}


# --------------------------------------------------------------------------- main


def parse_size(text: str) -> tuple:
    parts = tuple(int(v) for v in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 4:
        raise argparse.ArgumentTypeError(f"size must look like 80x96x80, got {text!r}")
    return parts


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=None, help="volume sizes DxHxW")
    quick_help = f"only {'x'.join(map(str, QUICK_SIZE))}, no slow references"
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--window", type=int, default=9, help="LNCC window in voxels (default 9)")
    parser.add_argument("--mi-samples", type=float, default=0.1, help="MI sampling fraction for the sampled row")
    parser.add_argument("--no-conv3d", action="store_true", help="skip the conv3d-with-ones LNCC reference")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [QUICK_SIZE] if args.quick else (args.sizes or list(DEFAULT_SIZES))
    w = args.window
    print(
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, float32, window {w}"
    )

    metrics = [
        ("lncc", "ours", lambda f, m: L.lncc_loss(f, m, w), "mono"),
        ("lncc", "conv3d-ones", lambda f, m: lncc_conv3d_ones(f, m, w), "mono"),
        ("lncc", "sep-conv", lambda f, m: lncc_separable_conv(f, m, w), "mono"),
        ("lncc", "cumsum", lambda f, m: lncc_cumsum(f, m, w), "mono"),
        ("lncc w=21", "ours", lambda f, m: L.lncc_loss(f, m, 21), "mono"),
        ("mse", "ours", lambda f, m: L.mse_loss(f, m), "mono"),
        ("mi", "ours, all voxels", lambda f, m: L.mutual_information_loss(f, m), "multi"),
        (
            "mi",
            f"ours, samples={args.mi_samples:g}",
            lambda f, m: L.mutual_information_loss(
                f, m, samples=args.mi_samples, generator=torch.Generator().manual_seed(0)
            ),
            "multi",
        ),
        ("ngf", "ours", lambda f, m: L.ngf_loss(f, m), "multi"),
    ]
    if args.quick or args.no_conv3d:
        metrics = [row for row in metrics if row[1] != "conv3d-ones"]

    results = []
    header = f"{'size':>12} {'metric':<10} {'implementation':<20} {'fwd ms':>9} {'fwd+bwd ms':>11} {'min ms':>9} " \
             f"{'cpu ms':>9} {'ratio':>7} {'loss':>9} {'|d loss|':>9} {'load':>6}"
    print(header)
    print("-" * len(header))
    for size in sizes:
        fixed = phantom(size, T1)
        moving = {"mono": phantom(size, T1, shift=1.5), "multi": phantom(size, T2, shift=1.5)}
        ours_ms = None
        ref_loss = None
        for metric, impl, fn, kind in metrics:
            r = bench_metric(fn, fixed, moving[kind], args.repeats)
            fb = r["fwd_bwd"]["median_s"] * 1e3
            if metric == "lncc" and impl == "ours":
                ours_ms = fb
            if metric == "lncc" and impl == "conv3d-ones":
                ref_loss = r["loss"]
            ratio = f"{fb / ours_ms:7.1f}" if metric == "lncc" and impl != "ours" and ours_ms else f"{'':>7}"
            diff = ""
            if metric == "lncc" and impl not in ("ours", "conv3d-ones") and ref_loss is not None:
                diff = f"{abs(r['loss'] - ref_loss):.1e}"
            loads = [x["load"] for x in (r["fwd"], r["fwd_bwd"]) if x["load"] is not None]
            load = max(loads) if loads else math.nan
            flag = "*" if load > LOAD_FLAG else " "
            print(
                f"{'x'.join(map(str, size)):>12} {metric:<10} {impl:<20} {r['fwd']['median_s'] * 1e3:9.1f} "
                f"{fb:11.1f} {r['fwd_bwd']['min_s'] * 1e3:9.1f} {r['fwd_bwd']['cpu_s'] * 1e3:9.1f} {ratio} "
                f"{r['loss']:9.4f} {diff:>9} {load:5.2f}{flag}",
                flush=True,
            )
            results.append({"size": list(size), "metric": metric, "implementation": impl, **r})
    if args.json:
        with open(args.json, "w") as fh:
            meta = {"torch": torch.__version__, "threads": torch.get_num_threads()}
            json.dump({**meta, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
