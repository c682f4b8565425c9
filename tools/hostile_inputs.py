"""Hostile-input census: feed every public interface the inputs a careless or hostile user would,
and count how each is answered.

Interfaces: the ``itk-odereg`` command line (``register``, ``apply``, ``export``), ``register()``,
``ODERegistrationMethod.Execute``, ``ODERegistrationFilter``, ``ants_registration`` and the exported
TorchScript module. Each case states what a correct tool does with it:

* ``refuse``: fail with a message that names the problem (one of the case's keywords);
* ``warn``: succeed, with a warning that names it;
* ``accept``: succeed, and the answer passes the case's check (for registrations: the warped image
  is closer to the fixed one than the unregistered moving image, and the written or returned
  transform, resampled by SimpleITK itself, reproduces the warped image);
* ``either``: refusing clearly or succeeding correctly are both right.

Each answer is then counted as one of

* ``clear``: refused as expected, naming the problem (CLI: non-zero exit, no traceback);
* ``correct``: accepted (or warned) as expected, and the check passed;
* ``unclear``: refused, but the message does not name the problem, or the CLI printed a traceback;
* ``silent wrong``: succeeded where it should have refused or warned, or its answer failed the check;
* ``crash``: killed by a signal or past its time limit.

Usage (about 6-8 minutes on 2 cores)::

    python tools/hostile_inputs.py [--work-dir DIR] [--only SUBSTRING] [--json census.json]

The command-line cases run as child processes; the Python ones run in this process (a crash there
would end the census, and is then reported by its absence). Nothing outside ``--work-dir`` (default:
a new temporary directory) is written. Reading the tool's own messages is the point: each case that
is not ``clear`` or ``correct`` is printed with the message it got.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import SimpleITK as sitk

OUTCOMES = ("clear", "correct", "unclear", "silent wrong", "crash")


@dataclass
class Answer:
    """What one case got: refused or not, the message (error or warnings) and, if run, the check."""

    refused: bool
    message: str
    crashed: bool = False
    traceback: bool = False
    check_error: Optional[str] = None


@dataclass
class Case:
    interface: str
    name: str
    run: Callable[[Path], Answer]
    expect: str  # refuse | warn | accept | either
    keywords: tuple = ()
    after: Optional[Callable[[], None]] = None  # checked after a refusal: nothing half-written left
    outcome: str = ""
    answer: Optional[Answer] = field(default=None, repr=False)


def _names_problem(message: str, keywords: tuple) -> bool:
    low = message.lower()
    return any(k.lower() in low for k in keywords)


def classify(case: Case, answer: Answer) -> str:
    """The outcome of ``case`` given its ``answer`` (see the module docstring)."""
    if answer.crashed:
        return "crash"
    if answer.refused:
        if case.expect in ("accept", "warn"):
            return "unclear"  # a refusal of a valid input is never clear
        if answer.check_error:
            return "silent wrong"  # refused, but left a partial output under a final name
        if answer.traceback or not _names_problem(answer.message, case.keywords):
            return "unclear"
        return "clear"
    if case.expect == "refuse":
        return "silent wrong"
    if answer.check_error:
        return "silent wrong"
    if case.expect == "warn" and not _names_problem(answer.message, case.keywords):
        return "silent wrong"
    return "correct"


# --------------------------------------------------------------------------- images


def blobs(size=(32, 32, 32), spacing=2.0, shift=(0.0, 0.0, 0.0), origin=None, direction=None,
          dtype=np.float32, scale=100.0) -> sitk.Image:
    """Smooth blobs on a grid (LPS mm), the content centred on the physical point (0, 0, 0) + ``shift``."""
    size = tuple(size)
    d = len(size)
    spacing = np.broadcast_to(np.asarray(spacing, float), (d,))
    direction = np.eye(d) if direction is None else np.asarray(direction, float)
    if origin is None:
        origin = -direction @ (spacing * (np.asarray(size) - 1) / 2)
    index = np.stack(np.meshgrid(*[np.arange(s) for s in size[::-1]], indexing="ij")[::-1], -1)
    points = (index * spacing) @ direction.T + np.asarray(origin)
    p = points - np.asarray(shift)[:d]
    p = p + 1.5 * np.sin(np.roll(p, -1, axis=-1) / 8.0)
    radii = np.array([14.0, 11.0, 9.0])[:d]
    bump = np.array([6.0, -5.0, 2.0])[:d]
    values = np.exp(-np.sum((p / radii) ** 2, -1)) + 0.6 * np.exp(-np.sum(((p - bump) / 5.0) ** 2, -1))
    image = sitk.GetImageFromArray((scale * values).astype(dtype))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(np.asarray(origin, float).tolist())
    image.SetDirection(direction.ravel().tolist())
    return image


def rotation(ax, ay, az) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    return (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))


def _with_array(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def make_inputs(d: Path) -> dict:
    """Write the census' input files into ``d``; their paths by name."""
    fixed = blobs()
    moving = blobs(shift=(3.0, -2.0, 1.5))
    paths = {}

    def write(name, image):
        paths[name] = str(d / name)
        sitk.WriteImage(image, paths[name])

    write("fixed.nii.gz", fixed)
    write("moving.nii.gz", moving)
    write("moving_oblique_aniso.nii.gz", blobs((26, 30, 14), (2.2, 1.7, 3.5), shift=(3.0, -2.0, 1.5),
                                               direction=rotation(0.2, -0.15, 0.3)))
    far = blobs(shift=(3.0, -2.0, 1.5))
    far.SetOrigin((np.array(far.GetOrigin()) + [300.0, 250.0, -200.0]).tolist())
    write("moving_far.nii.gz", far)
    write("clashWarped.nii.gz", fixed)
    write("fixed.nrrd", fixed)
    write("fixed.mha", fixed)
    write("fixed_int16.nii.gz", sitk.Cast(fixed, sitk.sitkInt16))
    write("fixed_huge.nii.gz", blobs(scale=1.0e6))
    negative = sitk.GetArrayFromImage(moving) - 500.0
    write("moving_negative.nii.gz", _with_array(moving, negative.astype(np.float32)))
    write("fixed_2d.nii.gz", blobs((40, 36)))
    write("moving_2d.nii.gz", blobs((40, 36), shift=(2.0, -1.0)))
    write("labels.nii.gz", sitk.Cast(sitk.BinaryThreshold(moving, 30.0, 1e9, 2, 0), sitk.sitkUInt8))
    arr = sitk.GetArrayFromImage(fixed)
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        bad = arr.copy()
        bad[16, 16, 16] = value
        for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
            write(f"fixed_{name}{ext}", _with_array(fixed, bad))
    write("constant.nii.gz", _with_array(fixed, np.full_like(arr, 5.0)))
    write("zeros.nii.gz", _with_array(fixed, np.zeros_like(arr)))
    write("image4d.nii.gz", sitk.JoinSeries([fixed] * 3))
    write("vector.nii.gz", sitk.Compose([fixed] * 3))
    write("complex.mha", sitk.RealAndImaginaryToComplex(fixed, fixed))
    write("tiny3.nii.gz", blobs((3, 3, 3), 8.0))
    write("thin_axis.nii.gz", blobs((32, 32, 1)))
    write("slab.nii.gz", blobs((64, 64, 5), (1.0, 1.0, 4.0)))
    sheared = blobs()
    sheared.SetDirection([1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    write("sheared.nrrd", sheared)
    # damaged files
    raw = Path(paths["fixed.nii.gz"]).read_bytes()
    (d / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    uncompressed = gzip.decompress(raw)
    (d / "truncated.nii").write_bytes(uncompressed[: len(uncompressed) // 2])
    (d / "empty.nii.gz").write_bytes(b"")
    (d / "garbage.nii.gz").write_bytes(np.random.default_rng(0).integers(0, 255, 4000, np.uint8).tobytes())
    (d / "text.txt").write_text("not an image\n")
    (d / "a_directory.nii.gz").mkdir()
    for name in ("truncated.nii.gz", "truncated.nii", "empty.nii.gz", "garbage.nii.gz", "text.txt",
                 "a_directory.nii.gz"):
        paths[name] = str(d / name)
    paths["missing.nii.gz"] = str(d / "missing.nii.gz")
    (d / "link_Warped.nii.gz").symlink_to(paths["fixed.nii.gz"])
    for name, options in (("full", "size=200k"), ("readonly", "ro,size=1m")):
        if _mount_tmpfs(d / name, options):
            paths[name] = str(d / name)
    return paths


def _mount_tmpfs(path: Path, options: str) -> bool:
    """A small tmpfs at ``path`` (root only; the cases that need one are left out otherwise)."""
    path.mkdir(exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _unmount_all(paths: dict) -> None:
    for name in ("full", "readonly"):
        if paths.get(name):
            subprocess.run(["umount", paths[name]], capture_output=True)


def _nothing_left(directory: str) -> None:
    left = sorted(os.listdir(directory))
    if left:
        raise AssertionError(f"a refused run left files behind: {left}")


# --------------------------------------------------------------------------- checks


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def check_registration(fixed_path: str, moving_path: str, warped: sitk.Image, transform: sitk.Transform) -> None:
    """Raise AssertionError unless ``warped`` is closer to the fixed image than the unregistered moving
    image and SimpleITK, resampling the moving image through ``transform``, reproduces ``warped``."""
    fixed = sitk.ReadImage(fixed_path, sitk.sitkFloat32)
    moving = sitk.ReadImage(moving_path, sitk.sitkFloat32)
    # compared away from the border, where the warped image holds the padding (0, as in ANTs)
    inner = tuple(slice(s // 8, s - s // 8) for s in fixed.GetSize()[::-1])
    f = sitk.GetArrayFromImage(fixed)
    unregistered = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, 0.0))
    before = _ncc(f[inner], unregistered[inner])
    w = sitk.GetArrayFromImage(sitk.Cast(warped, sitk.sitkFloat32))
    after = _ncc(f[inner], w[inner])
    if not after > max(before, 0.0) + 1e-3 and before < 0.999:
        raise AssertionError(f"no better aligned: NCC {before:.3f} before, {after:.3f} after")
    again = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    inside = np.abs(w) > 0
    err = np.abs(again - w)[inside]
    scale = np.abs(w).max() + 1e-12
    if inside.any() and np.percentile(err, 99) > 0.02 * scale:
        raise AssertionError(f"the transform does not reproduce the warped image (99th pct error "
                             f"{np.percentile(err, 99) / scale:.3f} of the range)")


def check_cli_prefix(fixed: str, moving: str, prefix: str) -> None:
    warped = sitk.ReadImage(prefix + "Warped.nii.gz")
    composite = sitk.ReadTransform(prefix + "Composite.h5")
    check_registration(fixed, moving, warped, composite)
    affine = sitk.ReadTransform(prefix + "0GenericAffine.mat")
    check_affine(np.array(affine.Downcast().GetMatrix()).reshape(3, 3) if affine.GetDimension() == 3
                 else np.array(affine.Downcast().GetMatrix()).reshape(2, 2))


def check_affine(matrix: np.ndarray) -> None:
    det = float(np.linalg.det(matrix))
    singular = np.linalg.svd(matrix, compute_uv=False)
    if not (0.5 ** len(singular) <= det <= 2.0 ** len(singular)) or singular.min() < 0.5 or singular.max() > 2.0:
        raise AssertionError(f"implausible affine kept without a warning: det {det:.3f}, scales {singular.round(3)}")


# --------------------------------------------------------------------------- runners

CLI_TIMEOUT_S = 300


def cli(*args: str, check: Optional[Callable[[], None]] = None, env: Optional[dict] = None) -> Callable[[Path], Answer]:
    def run(work: Path) -> Answer:
        cmd = [sys.executable, "-m", "itk_odereg", *args]
        try:
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                                  env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired:
            return Answer(True, f"timed out after {CLI_TIMEOUT_S} s", crashed=True)
        message = (proc.stderr + proc.stdout).strip()
        if proc.returncode < 0:
            return Answer(True, f"killed by signal {-proc.returncode}: {message}", crashed=True)
        answer = Answer(proc.returncode != 0, message, traceback="Traceback" in message)
        if not answer.refused and check is not None:
            answer.check_error = _run_check(check)
        return answer
    return run


def _run_check(check: Callable[[], None]) -> Optional[str]:
    try:
        check()
    except Exception as error:  # noqa: BLE001 - any failure of the check is the finding
        return f"{type(error).__name__}: {error}"
    return None


def python(call: Callable[[Path], Any], check: Optional[Callable[[Any], None]] = None) -> Callable[[Path], Answer]:
    def run(work: Path) -> Answer:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                value = call(work)
            except Exception as error:  # noqa: BLE001 - the refusal is what is measured
                text = f"{type(error).__name__}: {error}"
                # an exception from deep inside a library (IndexError, KeyError, ...) is not a refusal
                # that names its cause, whatever its text says
                raw = isinstance(error, (IndexError, KeyError, AttributeError, ZeroDivisionError, AssertionError))
                return Answer(True, text, traceback=raw)
        message = "\n".join(f"{w.category.__name__}: {w.message}" for w in caught)
        answer = Answer(False, message)
        if check is not None:
            answer.check_error = _run_check(lambda: check(value))
        return answer
    return run


# --------------------------------------------------------------------------- the cases


def cases(p: dict) -> list[Case]:
    F, M = p["fixed.nii.gz"], p["moving.nii.gz"]
    out: list[Case] = []

    def add(interface, name, run, expect, *keywords):
        out.append(Case(interface, name, run, expect, tuple(keywords)))

    # ---- itk-odereg register
    def reg(name, f, m, expect, *keywords, extra=(), check_pair=None):
        prefix = f"out_{len(out)}_"
        check = None
        if check_pair is not None:
            check = lambda: check_cli_prefix(check_pair[0], check_pair[1], str(Path(work_dir[0]) / prefix))
        add("cli register", name, cli("register", "-f", f, "-m", m, "-o", prefix, "--quiet", *extra, check=check),
            expect, *keywords)

    reg("valid pair", F, M, "accept", check_pair=(F, M))
    reg("same image as fixed and moving", F, F, "accept", check_pair=(F, F))
    reg("moving on an oblique anisotropic grid", F, p["moving_oblique_aniso.nii.gz"], "accept",
        check_pair=(F, p["moving_oblique_aniso.nii.gz"]))
    reg("moving 500 mm away (no overlap)", F, p["moving_far.nii.gz"], "accept", check_pair=(F, p["moving_far.nii.gz"]))
    reg("NRRD fixed", p["fixed.nrrd"], M, "accept", check_pair=(p["fixed.nrrd"], M))
    reg("int16 fixed", p["fixed_int16.nii.gz"], M, "accept", check_pair=(p["fixed_int16.nii.gz"], M))
    reg("intensities up to 1e6", p["fixed_huge.nii.gz"], M, "accept", check_pair=(p["fixed_huge.nii.gz"], M))
    reg("negative intensities", F, p["moving_negative.nii.gz"], "accept", check_pair=(F, p["moving_negative.nii.gz"]))
    reg("2D pair", p["fixed_2d.nii.gz"], p["moving_2d.nii.gz"], "accept",
        check_pair=(p["fixed_2d.nii.gz"], p["moving_2d.nii.gz"]))
    reg("slab 64x64x5", p["slab.nii.gz"], p["slab.nii.gz"], "either", "voxels", "implausible")
    for name in ("missing.nii.gz", "a_directory.nii.gz", "empty.nii.gz", "garbage.nii.gz", "text.txt",
                 "truncated.nii.gz", "truncated.nii"):
        keywords = {"missing.nii.gz": ("not found", "no such", "does not exist"),
                    "a_directory.nii.gz": ("directory",), "truncated.nii.gz": ("truncated",),
                    "truncated.nii": ("truncated", "size", "bytes")}.get(name, ("cannot read", "could not be read", "could not read",
                                                                                 "not an image", "unreadable", "empty"))
        reg(f"fixed: {name}", p[name], M, "refuse", *keywords)
        reg(f"moving: {name}", F, p[name], "refuse", *keywords)
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
        reg(f"fixed with a NaN voxel ({ext})", p["fixed_nan" + ext], M, "refuse", "nan")
        reg(f"moving with an Inf voxel ({ext})", F, p["fixed_inf" + ext], "refuse", "inf")
    reg("constant fixed", p["constant.nii.gz"], M, "refuse", "constant", "empty", "uniform")
    reg("all-zero moving", F, p["zeros.nii.gz"], "refuse", "constant", "empty", "zero")
    reg("4D fixed", p["image4d.nii.gz"], M, "refuse", "4d", "dimension")
    reg("vector moving", F, p["vector.nii.gz"], "refuse", "vector", "scalar", "component")
    reg("complex fixed", p["complex.mha"], M, "refuse", "complex", "scalar")
    reg("3x3x3 fixed", p["tiny3.nii.gz"], p["tiny3.nii.gz"], "refuse", "voxel")
    reg("one-voxel-thick fixed", p["thin_axis.nii.gz"], M, "refuse", "voxel", "dimension")
    reg("sheared direction", p["sheared.nrrd"], M, "refuse", "orthonormal", "shear")
    reg("2D fixed, 3D moving", p["fixed_2d.nii.gz"], M, "refuse", "dimension", "2d", "3d")
    reg("msodenet on a 2D pair", p["fixed_2d.nii.gz"], p["moving_2d.nii.gz"], "refuse", "3d",
        extra=("--method", "msodenet"))
    for flag, value, keywords in (
        ("--iterations", "0", ("iterations",)), ("--iterations", "-5", ("iterations",)),
        ("--iterations", "abc", ("iterations",)), ("--steps", "0", ("steps",)), ("--steps", "-1", ("steps",)),
        ("--resolution", "-1", ("resolution",)), ("--resolution", "1000", ("resolution", "voxels")),
        ("--threads", "0", ("threads",)), ("--threads", "-2", ("threads",)), ("--device", "gpu", ("device",)),
        ("--device", "cuda", ("cuda",)), ("--metric", "foo", ("metric",)), ("--method", "foo", ("method",)),
        ("--affine", "foo", ("affine",)), ("--seed", "abc", ("seed",)),
        ("--model", "rigid", ("model",)), ("--iterations", "0 0 0", ("iterations",)),
    ):
        reg(f"{flag} {value}", F, M, "refuse", *keywords, extra=(flag, *value.split()))
    reg("--seed -1", F, M, "either", "seed", extra=("--seed", "-1"))
    reg("--iterations with 4 values", F, M, "refuse", "iterations", extra=("--iterations", "1", "2", "3", "4"))
    reg("--model missing file", F, M, "refuse", "model", "not found", "no such",
        extra=("--method", "msodenet", "--model", "missing.pt"))
    reg("--model not a model file", F, M, "refuse", "model",
        extra=("--method", "msodenet", "--model", p["text.txt"]))
    add("cli register", "output directory missing",
        cli("register", "-f", F, "-m", M, "-o", "no/such/dir/x_", "--quiet"), "refuse", "directory")
    add("cli register", "output would overwrite the fixed image",
        cli("register", "-f", p["clashWarped.nii.gz"], "-m", M, "-o", str(Path(F).parent / "clash"), "--quiet"),
        "refuse", "overwrite")
    add("cli register", "output through a symlink to the fixed image",
        cli("register", "-f", F, "-m", M, "-o", "link_", "--quiet"), "refuse", "overwrite")
    add("cli register", "rerun into an existing prefix",
        cli("register", "-f", F, "-m", p["moving_oblique_aniso.nii.gz"], "-o", "out_0_", "--quiet", "--affine", "rigid",
            check=lambda: check_cli_prefix(F, p["moving_oblique_aniso.nii.gz"], str(Path(work_dir[0]) / "out_0_"))),
        "accept")
    for label, mount, keywords in (("a full disk (200 kB)", "full", ("no space left",)),
                                   ("a read-only output directory", "readonly", ("writ", "read-only", "permission"))):
        if p.get(mount):
            out.append(Case("cli register", f"output on {label}",
                            cli("register", "-f", F, "-m", M, "-o", str(Path(p[mount]) / "x_"), "--quiet"),
                            "refuse", keywords, after=lambda d=p[mount]: _nothing_left(d)))
    add("cli register", "no arguments", cli("register"), "refuse", "required")
    add("cli register", "unknown flag", cli("register", "-f", F, "-m", M, "-o", "x_", "--bogus"), "refuse",
        "unrecognized", "bogus")

    # ---- itk-odereg apply (needs the transforms of the valid pair)
    T = ["out_1_1Warp.nii.gz", "out_1_0GenericAffine.mat"]  # F to F: not touched by the rerun case

    def app(name, expect, *keywords, args=None, inp=M, ref=F, transforms=T, o=None, check=None):
        o = o or f"applied_{len(out)}.nii.gz"
        argv = args if args is not None else ["apply", "-i", inp, "-r", ref, "-o", o, "-t", *transforms]
        add("cli apply", name, cli(*argv, check=check), expect, *keywords)

    def same_as_warped():
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(work_dir[0]) / "applied_check.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(work_dir[0]) / "out_1_Warped.nii.gz")))
        if np.abs(a - b).max() > 1e-3 * np.abs(b).max():
            raise AssertionError(f"apply differs from Warped by {np.abs(a - b).max():.3g}")

    app("the valid pair's transforms", "accept", o="applied_check.nii.gz", check=same_as_warped, inp=F)
    app("ANTs [file,1] inversion syntax", "accept", transforms=["[out_1_0GenericAffine.mat,1]"])
    app("transform file missing", "refuse", "not found", "no such", "does not exist", transforms=["missing.mat"])
    app("truncated warp", "refuse", "truncated", transforms=[p["truncated.nii.gz"]])
    app("garbage .mat", "refuse", "transform", transforms=[p["text.txt"].replace(".txt", ".mat")])
    app("scalar image as a warp", "refuse", "displacement", "vector", "component", transforms=[F])
    app("--invert on a warp", "refuse", "invert", args=["apply", "-i", M, "-r", F, "-o", "x.nii.gz", "-t", *T,
                                                          "--invert", "1", "0"])
    app("--invert count mismatch", "refuse", "invert", args=["apply", "-i", M, "-r", F, "-o", "x.nii.gz",
                                                                "-t", *T, "--invert", "1"])
    app("input with a NaN voxel", "refuse", "nan", inp=p["fixed_nan.nii.gz"])
    app("input truncated", "refuse", "truncated", inp=p["truncated.nii.gz"])
    app("reference missing", "refuse", "not found", "no such", "does not exist", ref=p["missing.nii.gz"])
    app("unknown output extension", "refuse", "x.foo", o="x.foo")
    app("output is the input", "refuse", "overwrite", o=M)
    app("output directory missing", "refuse", "directory", o="no/such/dir/x.nii.gz")
    app("unknown interpolation", "refuse", "interpolation",
        args=["apply", "-i", M, "-r", F, "-o", "x.nii.gz", "-t", *T, "--interpolation", "cubic"])
    app("label map, linear interpolation", "warn", "integer", "nearest", inp=p["labels.nii.gz"])
    app("4D input", "refuse", "4d", "dimension", inp=p["image4d.nii.gz"])
    app("2D reference, 3D transforms", "refuse", "dimension", "2d", ref=p["fixed_2d.nii.gz"])
    app("sheared reference, NIfTI output", "refuse", "orthonormal", "shear", ref=p["sheared.nrrd"])

    # ---- itk-odereg export
    add("cli export", "valid .pt", cli("export", "-o", "model.pt"), "accept")
    add("cli export", "unknown model", cli("export", "--model", "nosuch", "-o", "m.pt"), "refuse", "model")
    add("cli export", "unknown extension", cli("export", "-o", "m.foo"), "refuse", "m.foo", ".pt")
    add("cli export", "output directory missing", cli("export", "-o", "no/such/m.pt"), "refuse", "directory")
    add("cli export", "--shape 0 0 0", cli("export", "-o", "m.pt2", "--shape", "0", "0", "0"), "refuse", "shape")
    add("cli export", "--shape 4 4 4", cli("export", "-o", "m4.pt2", "--shape", "4", "4", "4"), "refuse", "shape",
        "voxels")

    out.extend(python_cases(p))
    return out


work_dir: list = [None]


def _sitk(path):
    return sitk.ReadImage(path)


def python_cases(p: dict) -> list[Case]:
    import itk_odereg

    F, M = p["fixed.nii.gz"], p["moving.nii.gz"]
    fixed, moving = _sitk(F), _sitk(M)
    out: list[Case] = []

    def add(interface, name, call, expect, *keywords, check=None):
        out.append(Case(interface, name, python(call, check), expect, tuple(keywords)))

    def result_check(f_path, m_path):
        return lambda r: check_registration(f_path, m_path, r.warped, r.transform)

    nan_image = _sitk(p["fixed_nan.nrrd"])
    arr = sitk.GetArrayFromImage(fixed)
    bad_inputs = {
        "None": (None, ("fixed",)), "an int": (42, ("fixed",)), "a numpy array": (arr, ("fixed", "array")),
        "a missing path": (p["missing.nii.gz"], ("not found", "no such", "does not exist")),
        "a truncated file": (p["truncated.nii.gz"], ("truncated",)),
        "a NaN image": (nan_image, ("nan",)), "a constant image": (_sitk(p["constant.nii.gz"]), ("constant", "empty")),
        "a 4D image": (_sitk(p["image4d.nii.gz"]), ("4d", "dimension")),
        "a vector image": (_sitk(p["vector.nii.gz"]), ("vector", "scalar", "component")),
        "a sheared image": (_sitk(p["sheared.nrrd"]), ("orthonormal", "shear")),
        "a 3x3x3 image": (_sitk(p["tiny3.nii.gz"]), ("voxel",)),
        "a 2D image with a 3D moving": (_sitk(p["fixed_2d.nii.gz"]), ("dimension", "2d")),
    }
    bad_options = {
        "device='gpu'": ({"device": "gpu"}, ("device",)), "device='cuda'": ({"device": "cuda"}, ("cuda",)),
        "iterations=()": ({"iterations": ()}, ("iterations",)), "iterations=(0,)": ({"iterations": (0,)}, ("iterations",)),
        "steps=0": ({"steps": 0}, ("steps",)), "metric='x'": ({"metric": "x"}, ("metric",)),
        "method='x'": ({"method": "x"}, ("method",)), "seed='a'": ({"seed": "a"}, ("seed",)),
        "resolution_mm=-1": ({"resolution_mm": -1}, ("resolution",)), "unknown keyword": ({"bogus": 1}, ("bogus",)),
    }
    # register()
    add("register()", "valid SimpleITK pair", lambda w: itk_odereg.register(fixed, moving), "accept",
        check=result_check(F, M))
    add("register()", "valid paths", lambda w: itk_odereg.register(F, M), "accept", check=result_check(F, M))
    add("register()", "seed=None (fresh seed, recorded)", lambda w: itk_odereg.register(fixed, moving, seed=None),
        "accept", check=lambda r: None if isinstance(r.registration.seed, int) else (_ for _ in ()).throw(
            AssertionError("no seed recorded")))
    for label, (value, keywords) in bad_inputs.items():
        add("register()", f"fixed is {label}", lambda w, v=value: itk_odereg.register(v, moving), "refuse", *keywords)
    for label, (kwargs, keywords) in bad_options.items():
        add("register()", label, lambda w, k=kwargs: itk_odereg.register(fixed, moving, **k), "refuse", *keywords)

    # ODERegistrationMethod
    def execute(fixed_in, moving_in, **parameters):
        method = itk_odereg.ODERegistrationMethod(**parameters)
        return method.Execute(fixed_in, moving_in)

    add("Execute", "valid pair", lambda w: execute(fixed, moving), "accept",
        check=lambda t: check_registration(F, M, sitk.Resample(moving, fixed, t, sitk.sitkLinear, 0.0), t))
    for label in ("None", "a NaN image", "a 4D image", "a sheared image", "a constant image", "a missing path"):
        value, keywords = bad_inputs[label]
        add("Execute", f"fixed is {label}", lambda w, v=value: execute(v, moving), "refuse", *keywords)
    for label in ("device='gpu'", "iterations=()", "metric='x'", "unknown keyword"):
        kwargs, keywords = bad_options[label]
        add("Execute", label, lambda w, k=kwargs: execute(fixed, moving, **k), "refuse", *keywords)
    add("Execute", "errors labelled with the method", lambda w: execute(nan_image, moving), "refuse",
        "ODERegistrationMethod")

    # ODERegistrationFilter (ITK)
    def itk_filter(with_moving=True, **parameters):
        import itk
        f = itk.imread(F, itk.F)
        m = itk.imread(M, itk.F)
        flt = itk_odereg.ODERegistrationFilter.New(**parameters)
        flt.SetFixedImage(f)
        if with_moving:
            flt.SetMovingImage(m)
        flt.Update()
        return flt

    add("ODERegistrationFilter", "valid pair", lambda w: itk_filter(), "accept")
    add("ODERegistrationFilter", "no moving image", lambda w: itk_filter(with_moving=False), "refuse", "moving")
    add("ODERegistrationFilter", "Metric='x'", lambda w: itk_filter(Metric="x"), "refuse", "metric")

    # ants_registration
    def ants(*args, **kwargs):
        return itk_odereg.ants_registration(*args, **kwargs)

    add("ants_registration", "valid pair, SyN", lambda w: ants(fixed, moving, outprefix=str(w / "ants_")), "accept",
        check=lambda d: check_registration(F, M, d["warpedmovout"],
                                           sitk.CompositeTransform([sitk.ReadTransform(t) if t.endswith(".mat")
                                                                    else sitk.DisplacementFieldTransform(
                                                                        sitk.Cast(sitk.ReadImage(t), sitk.sitkVectorFloat64))
                                                                    for t in d["fwdtransforms"]][::-1])))
    add("ants_registration", "type_of_transform='Foo'", lambda w: ants(fixed, moving, "Foo"), "refuse",
        "type_of_transform")
    add("ants_registration", "metric='foo'", lambda w: ants(fixed, moving, metric="foo"), "refuse", "metric")
    add("ants_registration", "outprefix in a missing directory",
        lambda w: ants(fixed, moving, outprefix=str(w / "no" / "such" / "x_")), "refuse", "directory")
    add("ants_registration", "a NaN fixed image", lambda w: ants(nan_image, moving), "refuse", "nan")
    add("ants_registration", "unknown keyword", lambda w: ants(fixed, moving, bogus=1), "refuse", "bogus")
    add("ants_registration", "errors labelled ants_registration()", lambda w: ants(nan_image, moving), "refuse",
        "ants_registration")

    out.extend(exported_module_cases())
    return out


def exported_module_cases() -> list[Case]:
    import torch

    out: list[Case] = []
    state: dict = {}

    def module(work: Path):
        if "module" not in state:
            from itk_odereg.msodenet.export import export_model
            from itk_odereg.ops import library_path
            torch.ops.load_library(library_path())
            state["module"] = torch.jit.load(export_model("bspline", work / "census_bspline.pt"))
        return state["module"]

    shape = (1, 1, 24, 28, 24)
    g = torch.Generator().manual_seed(0)
    base_f = torch.rand(shape, generator=g)
    base_m = torch.roll(base_f, 2, dims=3)

    def add(name, make, expect, *keywords, check=None):
        out.append(Case("exported module", name, python(lambda w: module(w)(*make()), check), expect, tuple(keywords)))

    def same_as_normalized(u):
        reference = module(None)(base_f, base_m)
        if (u - reference).abs().max() > 1e-3 * (reference.abs().max() + 1e-6):
            raise AssertionError(f"raw intensities change the map by {(u - reference).abs().max():.3g} voxels")
        if u.requires_grad:
            raise AssertionError("the output requires grad")

    add("valid float32 pair", lambda: (base_f, base_m), "accept",
        check=lambda u: None if u.shape == (1, 3, *shape[2:]) and not u.requires_grad else (_ for _ in ()).throw(
            AssertionError(f"shape {tuple(u.shape)}, requires_grad {u.requires_grad}")))
    add("intensities 0 to 1000", lambda: (base_f * 1000, base_m * 1000), "accept", check=same_as_normalized)
    add("float64", lambda: (base_f.double(), base_m.double()), "accept", check=same_as_normalized)
    add("different shapes", lambda: (base_f, base_m[..., :20]), "refuse", "shape")
    nan_m = base_m.clone()
    nan_m[0, 0, 5, 5, 5] = float("nan")
    add("one NaN voxel", lambda: (base_f, nan_m), "refuse", "nan")
    add("2D inputs", lambda: (base_f[0, 0, 0], base_m[0, 0, 0]), "refuse", "[1, 1, d, h, w]", "shape")
    add("no batch axis", lambda: (base_f[0], base_m[0]), "refuse", "[1, 1, d, h, w]", "shape")
    add("uint8", lambda: ((base_f * 255).to(torch.uint8), (base_m * 255).to(torch.uint8)), "refuse", "integer",
        "float")
    add("batch 2", lambda: (base_f.repeat(2, 1, 1, 1, 1), base_m.repeat(2, 1, 1, 1, 1)), "refuse", "batch")
    add("two channels", lambda: (base_f.repeat(1, 2, 1, 1, 1), base_m.repeat(1, 2, 1, 1, 1)), "refuse", "channel")
    add("4 voxels per axis", lambda: (base_f[..., :4, :4, :4], base_m[..., :4, :4, :4]), "refuse", "voxels")

    def program(work: Path):
        if "program" not in state:
            module(work)  # loads the ops' library
            from itk_odereg.msodenet.export import export_model
            state["program"] = torch.export.load(export_model("bspline", work / "census_bspline.pt2",
                                                              shape=shape[2:])).module()
        return state["program"]

    def add_program(name, make, expect, *keywords, check=None):
        out.append(Case("exported program", name, python(lambda w: program(w)(*make()), check), expect,
                        tuple(keywords)))

    def same_as_module(u):
        reference = module(None)(base_f, base_m)
        if (u - reference).abs().max() > 1e-3 * (reference.abs().max() + 1e-6):
            raise AssertionError(f"the program differs from the module by {(u - reference).abs().max():.3g} voxels")

    add_program("valid float32 pair", lambda: (base_f, base_m), "accept", check=same_as_module)
    add_program("intensities 0 to 1000", lambda: (base_f * 1000, base_m * 1000), "accept", check=same_as_module)
    add_program("float64", lambda: (base_f.double(), base_m.double()), "refuse", "dtype")
    add_program("another shape", lambda: (base_f[..., :20], base_m[..., :20]), "refuse", "size()")
    add_program("one NaN voxel", lambda: (base_f, nan_m), "refuse", "nan")
    add_program("2D inputs", lambda: (base_f[0, 0, 0], base_m[0, 0, 0]), "refuse", "size()", "dim")
    add_program("uint8", lambda: ((base_f * 255).to(torch.uint8), (base_m * 255).to(torch.uint8)), "refuse", "dtype")
    return out


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", help="where inputs and outputs go (default: a new temporary directory)")
    parser.add_argument("--only", help="run only the cases whose interface or name contains this")
    parser.add_argument("--json", help="also write every case and its outcome here")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    work_dir[0] = str(work)
    paths = make_inputs(work)
    (work / "text.mat").write_text("not a transform\n")
    all_cases = cases(paths)
    if args.only:
        all_cases = [c for c in all_cases if args.only in c.interface or args.only in c.name]
    start = time.perf_counter()
    try:
        run_all(all_cases, work)
    finally:
        _unmount_all(paths)
    report(all_cases, time.perf_counter() - start)
    if args.json:
        Path(args.json).write_text(json.dumps([{
            "interface": c.interface, "case": c.name, "expect": c.expect, "outcome": c.outcome,
            "message": (c.answer.check_error or c.answer.message)[:2000]} for c in all_cases], indent=1))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_all(all_cases: list[Case], work: Path) -> None:
    for i, case in enumerate(all_cases, 1):
        t0 = time.perf_counter()
        try:
            case.answer = case.run(work)
            if case.answer.refused and not case.answer.crashed and case.after is not None:
                case.answer.check_error = _run_check(case.after)
        except Exception:  # noqa: BLE001 - a broken case is reported, not hidden
            case.answer = Answer(True, "the census itself failed:\n" + traceback.format_exc(), crashed=True)
        case.outcome = classify(case, case.answer)
        print(f"[{i:3d}/{len(all_cases)}] {time.perf_counter() - t0:5.1f} s  {case.outcome:12s}  "
              f"{case.interface}: {case.name}", flush=True)
        if case.outcome not in ("clear", "correct"):
            text = case.answer.check_error or case.answer.message or "(no message)"
            print("        " + text.strip().replace("\n", "\n        ")[:1500], flush=True)


def report(all_cases: list[Case], seconds: float) -> None:
    interfaces = sorted({c.interface for c in all_cases}, key=[c.interface for c in all_cases].index)
    width = max(len(i) for i in interfaces + ["total"])
    print(f"\n{'interface':{width}s}  " + "  ".join(f"{o:>12s}" for o in OUTCOMES) + "  cases")
    for interface in interfaces + ["total"]:
        chosen = [c for c in all_cases if interface in ("total", c.interface)]
        counts = [sum(c.outcome == o for c in chosen) for o in OUTCOMES]
        print(f"{interface:{width}s}  " + "  ".join(f"{n:12d}" for n in counts) + f"  {len(chosen):5d}")
    print(f"\n{len(all_cases)} cases in {seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
