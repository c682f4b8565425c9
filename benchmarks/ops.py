"""Benchmark the itk_odereg torch ops against their pure-PyTorch references.

Run with:

    python benchmarks/ops.py                        # 160x192x160 volume, CPU, all threads
    python benchmarks/ops.py --quick                # small volume, 1 thread: CI smoke test (~10 s)
    python benchmarks/ops.py --threads 1 --only warp bspline_to_dense
    python benchmarks/ops.py --allocator system     # glibc's default malloc behaviour (see below)
    python benchmarks/ops.py --device cuda --json bench-cuda.json

For every op and pass (forward, forward+backward) the table gives the median
wall time of our op and of its reference in ``itk_odereg.ops._reference``
(``warp``: the ``grid_sample(align_corners=True)`` path; ``bspline_to_dense``:
explicit basis matrices, plus a separable ``conv_transpose3d`` version written
here as a second reference; ``resample_linear``: ``F.interpolate(align_corners=True)``
and the dense per-axis matrices of ``core/separable.py``, upsampling a displacement from
a grid of 2/3 the volume's size), the peak extra memory of each path in the same
process, and the largest difference between the two results (outputs and
gradients), so that only equal computations are compared. Inputs are one
batch element: a smooth 1-channel image, a smooth 3-channel displacement of a
few voxels, and a 3-channel control grid with spacing 5 voxels; float32
unless ``--dtype float64``.

Method:

* Time: median over ``--repeats`` calls after one warm-up call (at most 3
  calls for paths slower than a second). On CUDA, the device is synchronized
  around each call. On CPU, the CPU time other processes took meanwhile is
  reported (from /proc/stat), and rows where it exceeds 0.1 cores are
  flagged: on a small machine a busy neighbour slows the multi-threaded ops
  (which wait for their slowest thread) more than single-threaded references.
* CPU allocator: every call allocates its outputs afresh, as in training.
  By default glibc serves a request it cannot fit in free heap memory with
  fresh mmap'ed pages when it is over 32 MiB, so whether a call pays the
  page faults of first touching its outputs depends on sizes and on what
  ran before (the order of the paths); in some VMs those faults cost more
  than the arithmetic (~25 ms for a 59 MiB field here). ``--allocator warm``
  (default) makes glibc keep and reuse freed memory (``mallopt``: no mmap,
  no automatic trim), the steady state of a training loop and the analogue
  of the CUDA caching allocator, so both paths are timed without page
  faults. ``--allocator system`` keeps glibc's defaults.
* Memory (CPU): the growth of the resident set during one call above the
  resident set just before it. Before the call, freed heap memory is handed
  back to the system (``malloc_trim``) and the peak is reset by writing 5 to
  ``/proc/self/clear_refs``; after it the peak is read from ``VmHWM`` in
  ``/proc/self/status`` (Linux only; elsewhere memory is reported as n/a).
  Outputs and gradients produced by the call count as extra memory, inputs
  do not. (CUDA): ``torch.cuda.max_memory_allocated()`` above
  ``memory_allocated()`` after ``reset_peak_memory_stats()``.
* Forward rows run on inputs that do not require grad. "fwd+bwd" rows call
  ``backward`` with a fixed random upstream gradient (energies: ``backward()``
  on the scalar), with the named inputs requiring grad.
* Warp throughput: bytes that must move at least (each input, output and
  gradient read or written once: forward ``(d + 2C) * V`` elements, backward
  adds ``(2C + 2d) * V``, plus ``C * V`` for the image gradient), divided by
  the time. On CUDA it is also given as a fraction of the card's peak memory
  bandwidth (``--bandwidth-gbs``, or a table by device name).

Targets (reported as PASS/FAIL, not asserted): warp forward+backward at least
2x faster than the grid_sample path with at most half its extra memory;
bspline_to_dense at least 3x faster than its reference.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

# torch first: it loads libc10 & co. that the op library links against.
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

try:
    import itk_odereg.ops as ops
except ImportError:  # run as a script from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import itk_odereg.ops as ops
from itk_odereg.core.separable import apply_separable, resampling_matrices
from itk_odereg.ops import _reference as ref

MIB = 2.0**20
CONTROL_SPACING = 5
QUICK_SIZE = (40, 48, 40)
# Peak memory bandwidth in GB/s by (lower-case) substring of the CUDA device name.
BANDWIDTH_GBS = {"h200": 4800.0, "h100": 3350.0, "a100": 2039.0, "l40s": 864.0, "a10": 600.0, "t4": 320.0}
OPS = ["warp", "bspline_to_dense", "resample_linear", "diffusion_energy", "bending_energy", "jacobian_determinant", "jacobian_penalty"]
TARGET_WARP_SPEEDUP = 2.0
TARGET_WARP_MEMORY = 2.0  # reference extra memory / ours
TARGET_BSPLINE_SPEEDUP = 3.0


# --------------------------------------------------------------------------- second reference for bspline_to_dense


def bspline_to_dense_conv_transpose(control: torch.Tensor, shape: Sequence[int], spacing: Sequence[int]) -> torch.Tensor:
    """Separable cubic B-spline evaluation as depthwise strided transposed convolutions, one axis at a time.

    Along an axis with spacing s, ``out[x] = sum_k c[k] B((x - (k - 1) s) / s)`` is a transposed
    convolution with stride s of the kernel ``w[j] = B((j - 2s + 1) / s)``, j = 0 .. 4s - 2, and
    padding 3s - 1; its output is at least ``shape[d]`` long and is cropped to it.
    """
    ndim = len(shape)
    conv = F.conv_transpose3d if ndim == 3 else F.conv_transpose2d
    channels = control.shape[1]
    out = control
    for d, (size, s) in enumerate(zip(shape, spacing)):
        j = torch.arange(4 * s - 1, dtype=control.dtype, device=control.device)
        kernel_shape, stride, padding = [1] * ndim, [1] * ndim, [0] * ndim
        kernel_shape[d], stride[d], padding[d] = 4 * s - 1, s, 3 * s - 1
        weight = ref.cubic_bspline((j - (2 * s - 1)) / s).reshape(1, 1, *kernel_shape)
        weight = weight.expand(channels, 1, *kernel_shape).contiguous()
        out = conv(out, weight, stride=stride, padding=padding, groups=channels).narrow(d + 2, 0, size)
    return out


# --------------------------------------------------------------------------- inputs


def make_inputs(size: Sequence[int], dtype: torch.dtype, device: torch.device) -> dict:
    """Deterministic, smooth inputs (smooth so that both warp paths see the same interpolation cells)."""
    D, H, W = size
    z = torch.arange(D, dtype=torch.float64).view(D, 1, 1)
    y = torch.arange(H, dtype=torch.float64).view(1, H, 1)
    x = torch.arange(W, dtype=torch.float64).view(1, 1, W)
    tau = 2 * math.pi
    image = (
        torch.sin(tau * z / 37 + 0.3) * torch.cos(tau * y / 53)
        + 0.5 * torch.sin(tau * (x / 29 + y / 71) + 1.0)
        + 0.25 * torch.cos(tau * (z / 23 - x / 41))
    )
    # Voxels. Not an integer: where a sine peaks at an integer amplitude, p + u(p) rounds onto voxel
    # planes over whole patches in float32, and there the warp gradient is one-sided (either side is
    # a valid derivative, so the two paths may differ). det(I + Du) dips below 0.5 in places, so
    # jacobian_penalty is not trivially 0.
    amp = 2.7
    displacement = torch.stack(
        [
            amp * torch.sin(tau * (z / 31 + y / 61 + x / 47) + 0.4).expand(D, H, W),
            amp * torch.sin(tau * (z / 53 + y / 29 - x / 59) + 1.1).expand(D, H, W),
            amp * torch.sin(tau * (-z / 43 + y / 67 + x / 27) + 2.0).expand(D, H, W),
        ]
    )
    gen = torch.Generator().manual_seed(0)
    control_shape = ops.bspline_control_shape(size, [CONTROL_SPACING] * 3)
    to = dict(dtype=dtype, device=device)
    inputs = {
        "image": image[None, None].to(**to).contiguous(),
        "displacement": displacement[None].to(**to).contiguous(),
        "control": (2.0 * torch.randn(1, 3, *control_shape, generator=gen, dtype=torch.float64)).to(**to),
        "grad_image": torch.randn(1, 1, D, H, W, generator=gen, dtype=torch.float64).to(**to),
        "grad_field": torch.randn(1, 3, D, H, W, generator=gen, dtype=torch.float64).to(**to),
        "grad_det": torch.randn(1, D, H, W, generator=gen, dtype=torch.float64).to(**to),
    }
    return inputs


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    op: str
    pass_: str
    ours: Callable[[], tuple]
    refs: list  # [(label, callable)]
    leaves: list = field(default_factory=list)  # tensors whose .grad is reset before every call
    warp_elements: Optional[int] = None  # minimal elements moved (warp rows), for throughput


def _forward(fn, *args):
    return lambda: (fn(*args),)


def _fwd_bwd(fn, args, leaves, grad_output=None):
    def run():
        for t in leaves:
            t.grad = None
        out = fn(*args)
        if grad_output is None:
            out.backward()
        else:
            out.backward(grad_output)
        return (out.detach(),) + tuple(t.grad for t in leaves)

    return run


def build_cases(inp: dict, size: Sequence[int], only: Optional[Sequence[str]]) -> list:
    image, disp, control = inp["image"], inp["displacement"], inp["control"]
    spacing = [CONTROL_SPACING] * 3
    V = image[0, 0].numel()
    C, d = image.shape[1], disp.shape[1]
    leaf = lambda t: t.detach().clone().requires_grad_(True)  # noqa: E731
    cases = []

    # warp
    img_l, disp_l = leaf(image), leaf(disp)
    disp_only = leaf(disp)
    fwd_elems = (d + 2 * C) * V
    cases += [
        Case("warp", "forward", _forward(ops.warp, image, disp), [("grid_sample", _forward(ref.warp, image, disp))],
             warp_elements=fwd_elems),
        Case("warp", "fwd+bwd (image+disp)", _fwd_bwd(ops.warp, (img_l, disp_l), [img_l, disp_l], inp["grad_image"]),
             [("grid_sample", _fwd_bwd(ref.warp, (img_l, disp_l), [img_l, disp_l], inp["grad_image"]))],
             leaves=[img_l, disp_l], warp_elements=fwd_elems + (3 * C + 2 * d) * V),
        Case("warp", "fwd+bwd (disp only)", _fwd_bwd(ops.warp, (image, disp_only), [disp_only], inp["grad_image"]),
             [("grid_sample", _fwd_bwd(ref.warp, (image, disp_only), [disp_only], inp["grad_image"]))],
             leaves=[disp_only], warp_elements=fwd_elems + (2 * C + 2 * d) * V),
    ]

    # bspline_to_dense
    ctrl_l = leaf(control)
    bs_args, bs_leaf_args = (control, size, spacing), (ctrl_l, size, spacing)
    gf = inp["grad_field"]
    cases += [
        Case("bspline_to_dense", "forward", _forward(ops.bspline_to_dense, *bs_args),
             [("basis matrices", _forward(ref.bspline_to_dense, *bs_args)),
              ("conv_transpose3d", _forward(bspline_to_dense_conv_transpose, *bs_args))]),
        Case("bspline_to_dense", "fwd+bwd", _fwd_bwd(ops.bspline_to_dense, bs_leaf_args, [ctrl_l], gf),
             [("basis matrices", _fwd_bwd(ref.bspline_to_dense, bs_leaf_args, [ctrl_l], gf)),
              ("conv_transpose3d", _fwd_bwd(bspline_to_dense_conv_transpose, bs_leaf_args, [ctrl_l], gf))],
             leaves=[ctrl_l]),
    ]

    # resample_linear: a displacement from a grid of 2/3 the size (NODEO's flow grid) up to the volume
    coarse = ref.resample_linear(disp, [max(2, round(2 * s / 3)) for s in size]).contiguous()
    coarse_l = leaf(coarse)
    matrices = resampling_matrices(coarse.shape[2:], size, coarse.dtype, coarse.device)
    dense_matrices = lambda x: apply_separable(x, matrices)  # noqa: E731
    cases += [
        Case("resample_linear", "forward", _forward(ops.resample_linear, coarse, size),
             [("F.interpolate", _forward(ref.resample_linear, coarse, size)),
              ("dense matrices", _forward(dense_matrices, coarse))]),
        Case("resample_linear", "fwd+bwd", _fwd_bwd(ops.resample_linear, (coarse_l, size), [coarse_l], gf),
             [("F.interpolate", _fwd_bwd(ref.resample_linear, (coarse_l, size), [coarse_l], gf)),
              ("dense matrices", _fwd_bwd(dense_matrices, (coarse_l,), [coarse_l], gf))],
             leaves=[coarse_l]),
    ]

    # regularizers
    u_l = leaf(disp)
    for name, grad_output in [("diffusion_energy", None), ("bending_energy", None),
                              ("jacobian_determinant", inp["grad_det"]), ("jacobian_penalty", None)]:
        ours_fn, ref_fn = getattr(ops, name), getattr(ref, name)
        cases += [
            Case(name, "forward", _forward(ours_fn, disp), [("_reference", _forward(ref_fn, disp))]),
            Case(name, "fwd+bwd", _fwd_bwd(ours_fn, (u_l,), [u_l], grad_output),
                 [("_reference", _fwd_bwd(ref_fn, (u_l,), [u_l], grad_output))], leaves=[u_l]),
        ]
    if only:
        cases = [c for c in cases if c.op in only]
    return cases


# --------------------------------------------------------------------------- measurement


class CpuMeter:
    """Peak resident-set growth during a call (Linux: VmHWM reset through /proc/self/clear_refs)."""

    def __init__(self):
        self.available = False
        self.note = "n/a (needs Linux /proc/self/clear_refs)"
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None
        try:
            self._reset()
            rss, hwm = self._status()
            self.available = hwm - rss < 1.0  # the reset worked
            if self.available:
                self.note = "peak RSS growth (VmHWM after /proc/self/clear_refs reset, malloc_trim before)"
        except OSError:
            pass

    @staticmethod
    def _status():
        values = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    values[key] = int(value.split()[0]) / 1024.0  # kB -> MiB
        return values["VmRSS"], values["VmHWM"]

    def _reset(self):
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def sync(self):
        pass

    def measure(self, run):
        if not self.available:
            return run(), None
        self._reset()
        base, _ = self._status()
        result = run()
        _, peak = self._status()
        return result, max(0.0, peak - base)


class CudaMeter:
    available = True
    note = "torch.cuda.max_memory_allocated() above memory_allocated() at the call"

    def __init__(self, device):
        self.device = device

    def sync(self):
        torch.cuda.synchronize(self.device)

    def measure(self, run):
        gc.collect()
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        result = run()
        self.sync()
        return result, (torch.cuda.max_memory_allocated(self.device) - base) / MIB


class LoadMonitor:
    """CPU time that other processes used (in cores, on average) between two snapshots (Linux /proc/stat)."""

    def __init__(self):
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def snapshot(self):
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
            busy = (sum(fields[:8]) - fields[3] - fields[4]) / self._hz  # all but idle and iowait
        except (OSError, ValueError, IndexError):
            busy = None
        return busy, time.process_time(), time.perf_counter()

    @staticmethod
    def other_cores(start, end) -> Optional[float]:
        if start[0] is None or end[0] is None or end[2] <= start[2]:
            return None
        return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / (end[2] - start[2]))


def _timed(run, meter, reset) -> float:
    reset()
    meter.sync()
    t0 = time.perf_counter()
    out = run()
    meter.sync()
    elapsed = time.perf_counter() - t0
    del out
    reset()
    return elapsed


def measure_case(runs: list, meter, repeats: int, reset: Callable[[], None]) -> list:
    """For each path: a warm-up call, timed calls, then one memory-measured call whose result is kept
    for the comparison. Timed calls of the paths are interleaved, so that a burst of load from other
    processes hits ours and the references alike. Returns [(result, extra MiB, [seconds])]."""
    warm = [_timed(run, meter, reset) for run in runs]
    counts = [repeats if w < 1.0 else min(repeats, 3) for w in warm]
    times = [[] for _ in runs]
    for i in range(max(counts)):
        for k, run in enumerate(runs):
            if i < counts[k]:
                times[k].append(_timed(run, meter, reset))
    measured = []
    for run in runs:
        reset()
        result, extra_mib = meter.measure(run)
        measured.append((tuple(t.detach() for t in result), extra_mib))
        del result
        reset()
    return [(result, mib, t) for (result, mib), t in zip(measured, times)]


def max_diff(a: tuple, b: tuple):
    """Largest |a - b| over the outputs and gradients, the same relative to max |b|, and how many
    elements differ by more than 1e-3 max |b| (a handful are expected in float32 warp gradients:
    where p + u(p) rounds onto an integer, the two paths may take the slope of different cells)."""
    abs_diff, rel_diff, count = 0.0, 0.0, 0
    for x, y in zip(a, b):
        err = (x.double() - y.double()).abs()
        diff = err.max().item()
        scale = y.double().abs().max().item()
        abs_diff = max(abs_diff, diff)
        rel_diff = max(rel_diff, diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))
        count += int((err > 1e-3 * scale).sum().item())
    return abs_diff, rel_diff, count


# --------------------------------------------------------------------------- report


def _fmt(value, spec, width):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    if isinstance(value, float) and math.isinf(value):
        return "inf".rjust(width)
    return format(value, spec).rjust(width)


def _ratio(num, den, min_den=0.0):
    if num is None or den is None:
        return None
    if den <= min_den:
        return None
    return num / den


def print_table(rows):
    cols = [("op", 20, "<"), ("pass", 21, "<"), ("reference", 16, "<"), ("ours ms", 9, ">"), ("ref ms", 9, ">"),
            ("speedup", 8, ">"), ("ours MiB", 9, ">"), ("ref MiB", 9, ">"), ("mem ref/ours", 12, ">"),
            ("max|diff|", 9, ">"), ("rel diff", 8, ">")]
    header = " ".join(format(name, f"{align}{w}") for name, w, align in cols)
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = [
            format(r["op"], "<20"), format(r["pass"], "<21"), format(r["reference"], "<16"),
            _fmt(r["ours_ms"], ".1f", 9), _fmt(r["ref_ms"], ".1f", 9), _fmt(r["speedup"], ".2f", 7) + "x",
            _fmt(r["ours_mib"], ".1f", 9), _fmt(r["ref_mib"], ".1f", 9),
            (_fmt(r["mem_ratio"], ".2f", 11) + "x") if r["mem_ratio"] is not None else _fmt(None, "", 12),
            _fmt(r["max_abs_diff"], ".1e", 9), _fmt(r["rel_diff"], ".0e", 8),
        ]
        print(" ".join(cells))


def evaluate_targets(rows):
    results = []
    for r in rows:
        if r["op"] == "warp" and r["pass"].startswith("fwd+bwd"):
            ok_t = r["speedup"] is not None and r["speedup"] >= TARGET_WARP_SPEEDUP
            results.append((f"warp {r['pass']}: speedup >= {TARGET_WARP_SPEEDUP:g}x vs grid_sample",
                            f"{r['speedup']:.2f}x", ok_t))
            if r["ours_mib"] is None or r["ref_mib"] is None:
                results.append((f"warp {r['pass']}: extra memory <= 1/{TARGET_WARP_MEMORY:g} of grid_sample",
                                "n/a", None))
            else:
                ratio = r["ours_mib"] / r["ref_mib"] if r["ref_mib"] > 0 else math.inf
                results.append((f"warp {r['pass']}: extra memory <= 1/{TARGET_WARP_MEMORY:g} of grid_sample",
                                f"{r['ours_mib']:.0f} / {r['ref_mib']:.0f} MiB = {ratio:.2f}",
                                ratio <= 1.0 / TARGET_WARP_MEMORY))
        if r["op"] == "bspline_to_dense" and r["reference"] == "basis matrices":
            ok_t = r["speedup"] is not None and r["speedup"] >= TARGET_BSPLINE_SPEEDUP
            results.append((f"bspline_to_dense {r['pass']}: speedup >= {TARGET_BSPLINE_SPEEDUP:g}x vs _reference",
                            f"{r['speedup']:.2f}x", ok_t))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", type=int, nargs=3, metavar=("D", "H", "W"), default=None,
                        help="volume size, tensor order (default 160 192 160; --quick: %d %d %d)" % QUICK_SIZE)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per path (default 7, --quick 3; at most 3 for paths slower than 1 s)")
    parser.add_argument("--quick", action="store_true",
                        help="small volume, few repeats, 1 thread unless --threads (CI smoke test, a few seconds)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's; --quick: 1, since on a busy machine "
                             "OpenMP regions that wait for a descheduled thread can take 100x longer)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--only", nargs="+", metavar="OP", default=None, choices=OPS,
                        help="benchmark only these ops (%s)" % " ".join(OPS))
    parser.add_argument("--bandwidth-gbs", type=float, default=None,
                        help="peak memory bandwidth for the warp throughput fraction (default: by CUDA device name)")
    parser.add_argument("--allocator", choices=["warm", "system"], default="warm",
                        help="CPU: 'warm' (default) reuses freed memory; 'system' keeps glibc's defaults, where "
                             "large outputs may land on fresh pages, and calls pay their page faults")
    parser.add_argument("--json", metavar="PATH", default=None, help="write all numbers to this JSON file")
    args = parser.parse_args(argv)

    size = tuple(args.size) if args.size else (QUICK_SIZE if args.quick else (160, 192, 160))
    repeats = args.repeats if args.repeats else (3 if args.quick else 7)
    threads = args.threads if args.threads else (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    dtype = getattr(torch, args.dtype)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: torch.cuda.is_available() is False")
        device = torch.device("cuda", torch.cuda.current_device())
        device_name = torch.cuda.get_device_name(device)
        meter = CudaMeter(device)
    else:
        device = torch.device("cpu")
        device_name = _cpu_name()
        meter = CpuMeter()
    allocator_note = configure_cpu_allocator(args.allocator) if args.device == "cpu" else "CUDA caching allocator"
    has_cuda_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("itk_odereg::warp", "CUDA") if ops.has_ops() else False
    bandwidth = args.bandwidth_gbs
    if bandwidth is None and args.device == "cuda":
        bandwidth = next((v for k, v in BANDWIDTH_GBS.items() if k in device_name.lower()), None)

    header = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": f"{args.device} ({device_name})",
        "has_ops": ops.has_ops(),
        "ops_cuda_kernels": has_cuda_kernels,
        "size": list(size),
        "dtype": args.dtype,
        "repeats": repeats,
        "control_spacing": CONTROL_SPACING,
        "memory": meter.note,
        "cpu_allocator": allocator_note,
        "bandwidth_gbs": bandwidth,
    }
    print("itk_odereg ops benchmark")
    for key, value in header.items():
        print(f"  {key:17s} {value}")
    if not ops.has_ops():
        print("  WARNING: the compiled ops are not loaded; 'ours' falls back to the references, so the comparison "
              "is meaningless. Build with `python setup.py build_ext --inplace`.")
    if args.device == "cuda" and not has_cuda_kernels:
        print("  WARNING: the op library has no CUDA kernels; build it with CUDA to benchmark on the GPU.")
    print(flush=True)

    load = LoadMonitor()
    start = time.perf_counter()
    load_start = load.snapshot()
    inp = make_inputs(size, dtype, device)
    cases = build_cases(inp, size, args.only)
    rows = []
    for case in cases:
        reset = lambda: [setattr(t, "grad", None) for t in case.leaves]  # noqa: E731
        case_start = load.snapshot()
        measured = measure_case([case.ours] + [run for _, run in case.refs], meter, repeats, reset)
        other = load.other_cores(case_start, load.snapshot())
        ours_out, ours_mib, ours_times = measured[0]
        for (label, _), (ref_out, ref_mib, ref_times) in zip(case.refs, measured[1:]):
            abs_diff, rel_diff, n_off = max_diff(ours_out, ref_out)
            ours_ms, ref_ms = 1e3 * statistics.median(ours_times), 1e3 * statistics.median(ref_times)
            row = {
                "op": case.op, "pass": case.pass_, "reference": label,
                "ours_ms": ours_ms, "ref_ms": ref_ms, "speedup": ref_ms / ours_ms,
                "ours_mib": ours_mib, "ref_mib": ref_mib,
                "mem_ratio": _ratio(ref_mib, ours_mib, min_den=0.5),
                "max_abs_diff": abs_diff, "rel_diff": rel_diff, "n_elements_off": n_off,
                "other_processes_cores": other,
                "ours_times_ms": [1e3 * t for t in ours_times], "ref_times_ms": [1e3 * t for t in ref_times],
            }
            if case.warp_elements is not None:
                nbytes = case.warp_elements * inp["image"].element_size()
                row["warp_min_bytes"] = nbytes
                row["ours_gbs"] = nbytes / (ours_ms * 1e-3) / 1e9
                row["ref_gbs"] = nbytes / (ref_ms * 1e-3) / 1e9
                if bandwidth:
                    row["ours_bandwidth_fraction"] = row["ours_gbs"] / bandwidth
                    row["ref_bandwidth_fraction"] = row["ref_gbs"] / bandwidth
            rows.append(row)
            print(f"  {case.op} {case.pass_} vs {label}: ours {ours_ms:.1f} ms, ref {ref_ms:.1f} ms", flush=True)
        del measured, ours_out, ref_out
    elapsed = time.perf_counter() - start
    other_total = load.other_cores(load_start, load.snapshot())

    print()
    print_table(rows)
    print("\nspeedup = ref ms / ours ms; mem ref/ours = reference extra MiB / ours (shown when ours >= 0.5 MiB);")
    print("max|diff| / rel diff: largest difference of outputs and gradients, absolute and relative to max |ref|.")
    for r in rows:
        if r["n_elements_off"]:
            why = " (positions p + u(p) that round onto a voxel plane, where the slope is one-sided)" \
                if r["op"] == "warp" else ""
            print(f"  {r['op']} {r['pass']} vs {r['reference']}: {r['n_elements_off']} element(s) differ by more "
                  f"than 1e-3 max|ref|{why}")

    warp_rows = [r for r in rows if "warp_min_bytes" in r]
    if warp_rows:
        print("\nwarp throughput (minimal bytes moved / time):")
        for r in warp_rows:
            line = f"  {r['pass']:21s} {r['warp_min_bytes'] / MIB:8.0f} MiB  ours {r['ours_gbs']:7.1f} GB/s  " \
                   f"grid_sample {r['ref_gbs']:7.1f} GB/s"
            if bandwidth:
                line += f"  ({100 * r['ours_bandwidth_fraction']:.1f}% / {100 * r['ref_bandwidth_fraction']:.1f}% " \
                        f"of {bandwidth:g} GB/s)"
            print(line)

    targets = evaluate_targets(rows)
    if targets:
        print("\ntargets:")
        for name, value, ok in targets:
            verdict = "n/a " if ok is None else ("PASS" if ok else "FAIL")
            print(f"  {verdict}  {name}: {value}")
    print(f"\ntotal benchmark time {elapsed:.1f} s")
    if other_total is not None and args.device == "cpu":
        print(f"CPU used by other processes meanwhile: {other_total:.2f} cores on average (of {os.cpu_count()})")
        noisy = [r for r in rows if (r["other_processes_cores"] or 0.0) > 0.1]
        if noisy:
            print("  WARNING: other processes competed for the CPU during these rows; their times are not reliable:")
            for r in noisy:
                print(f"    {r['op']} {r['pass']} vs {r['reference']}: {r['other_processes_cores']:.2f} cores")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows,
                       "targets": [{"target": n, "value": v, "pass": ok} for n, v, ok in targets],
                       "elapsed_s": elapsed, "other_processes_cores": other_total}, f, indent=2)
        print(f"wrote {args.json}")


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (glibc malloc.h)


def configure_cpu_allocator(mode: str) -> str:
    """'warm': glibc keeps freed memory for reuse (no mmap'ed chunks, no automatic trim)."""
    if mode == "system":
        return "system: glibc defaults (requests over 32 MiB that miss the heap get fresh mmap'ed pages)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "allocator defaults (mallopt unavailable: not glibc)"
    return "warm: freed memory kept and reused (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} logical CPUs"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"


if __name__ == "__main__":
    main()
