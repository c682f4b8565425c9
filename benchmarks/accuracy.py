"""Registration accuracy and cost of NODEO against greedy, ANTs SyN and elastix on synthetic brain pairs.

Run with:

    python benchmarks/accuracy.py --label-maps /work/shared/data/label_maps --quick
    python benchmarks/accuracy.py --label-maps /work/shared/data/label_maps --resolution 2 --pairs 2 \\
        --contrast mono,multi --json accuracy-2mm.json
    python benchmarks/accuracy.py --label-maps /work/shared/data/label_maps --profile
    python benchmarks/accuracy.py --label-maps /work/shared/data/label_maps --pairs 1 --contrast mono \\
        --methods nodeo --nodeo-variant 'fast={"levels": [4, 2], "iterations": [150, 100]}'
    python benchmarks/accuracy.py --label-maps /work/shared/data/label_maps --pairs 6 --contrast mono,multi \\
        --methods cli,greedy,greedy-full --threads 2 --json end-to-end.json      # end to end (issue 12)

The peers are benchmark extras: ``pip install picsl-greedy itk-elastix antspyx``.
Methods that are not installed are skipped (and said so).

What it measures (docs/methods.md, section 4):

* Pairs: inter-subject, ``subject i -> subject j`` from a fixed list (first
  pairs are disjoint: 01->02, 03->04, ...). Images are synthesized from the
  label maps by ``benchmarks/_synth.py``: "mono" is a T1-like moving image
  against a T1-like fixed image of the other subject (independent seeds),
  "multi" a T1-like moving image against a T2-like fixed image.
* One shared affine step for every method: SimpleITK (MOMENTS initializer,
  similarity then affine, mean squares on noise-free brain-only images from
  the labels, 3 mm), computed once per subject pair and used by both tasks.
  The moving image (linear) and moving labels (nearest) are resampled through
  it onto a 160x192x160 mm box around the fixed brain (80x96x80 voxels at
  2 mm, 160x192x160 at 1 mm), where the fixed image and labels are sampled
  too. Every deformable-only method then runs only its DEFORMABLE stage on this pair
  (the end-to-end modes run their own affine stage first).
* Two kinds of run. The DEFORMABLE-ONLY methods (``nodeo``, ``greedy``, ``ants``,
  ``elastix``, the default set) start from the shared pre-alignment above and time the
  registration call alone. The END-TO-END modes (``cli``, ``greedy-full``, only when named in
  ``--methods``) run their own affine stage too, on the same pre-aligned pairs: ``cli`` is the
  ``itk-odereg register`` command as a user runs it, timed from process start to exit, and
  ``greedy-full`` is greedy's affine followed by its deformable stage, timed together.
* Methods (each in a fresh subprocess, so its peak memory is its own):

  - ``nodeo``: ``itk_odereg.register(fixed, moving, affine=None, metric="lncc"``
    (mono) or ``"ngf"`` (multi, the metric recommended for different contrasts), ``resolution_mm=None)`` with the default
    ``NODEOSettings``; ``--nodeo-variant NAME=JSON`` adds ``nodeo:NAME`` with
    ``NODEOSettings(metric=..., **JSON)``. A key ``"env"`` in the JSON holds environment
    variables for that run's process instead (``'scalar={"env": {"ITK_ODEREG_SCALAR_KERNELS":
    "1"}}'`` times the scalar warp kernels side by side with the default ones).
  - ``greedy``: picsl_greedy ``Greedy3D``, ``-n 100x50x20``, ``-m NCC 2x2x2``
    (mono) or ``-m NMI`` (multi), default smoothing (1.732vox, 0.707vox).
  - ``ants``: antspyx ``registration(type_of_transform="SyNOnly",
    initial_transform="Identity")``, ``syn_metric="CC"`` radius 2 (mono) or
    ``"mattes"`` 32 bins (multi), ``reg_iterations=(100, 70, 20)`` (shrink
    4/2/1, smoothing 2/1/0 voxels; antspyx's default (40, 20, 0) skips the
    finest level).
  - ``elastix``: itk-elastix, elastix's default ``bspline`` parameter map
    (AdvancedMattesMutualInformation + bending energy, 4 resolutions, 256
    iterations each, final grid spacing 10 mm) for both tasks.
  - ``cli`` (end to end): the ``itk-odereg`` console script next to this interpreter, run as
    ``itk-odereg register -f fixed.nii -m moving.nii -o OUT/pair_ --metric lncc|ngf --quiet
    --threads N``, every other option at its default (affine stage, 2 mm working grid),
    with the environment of ``thread_env``. Wall seconds: ``Popen`` to exit (all eight outputs
    are written before exit; ``last_output_seconds``, the newest output's mtime after the start,
    checks it). CPU seconds and peak memory: the ``rusage`` of that process alone
    (``os.wait4``: ``ru_utime + ru_stime``, ``ru_maxrss``); it includes the interpreter start,
    the imports, reading the inputs and writing the outputs. The labels are warped through the
    written ``pair_1Warp.nii.gz`` + ``pair_0GenericAffine.mat`` (``sitk.Resample``, nearest);
    ``labels_agree_with_composite_h5`` in the JSON checks them against ``pair_Composite.h5``.
  - ``greedy-full`` (end to end): ``-a -dof 12 -ia-image-centers -n 100x50x10`` (greedy's
    documented affine recipe), then the deformable stage of ``greedy`` with ``-it`` that
    affine; the same metric for both stages; one time for both (``affine_seconds`` and
    ``deformable_seconds`` in the JSON). Labels: greedy ``-ri NN -r warp affine``; field:
    greedy ``-rc`` (the composed map).

  Each method's transform is applied to the moving LABELS with nearest
  neighbour by that tool's own means (``sitk.Resample`` with our composite,
  greedy ``-ri NN``, ``ants.apply_transforms(interpolator="nearestNeighbor")``,
  transformix with order 0), onto the fixed box.
* Metrics per method and pair:

  - Dice per brain structure of ``labels_table.txt`` (not 0, not >= 500)
    present in both pre-aligned label maps, averaged over those structures (a
    structure a method loses counts as 0). The table gives the mean over pairs
    +- the SD over pairs.
  - Regularity from each method's dense displacement field on the fixed box
    (fixed -> moving, LPS mm: ``sitk.TransformToDisplacementField`` of the
    tool's transforms, transformix's deformation field for elastix), converted
    to voxel units and passed to ``itk_odereg.ops.jacobian_determinant`` (the
    same central differences for every method): % voxels of the box with
    det J <= 0, and the SD of log det J over the voxels with det J > 0.
  - As a check of conventions, the labels are also warped with
    ``sitk.Resample`` through that dense field; ``dice_via_field`` in the JSON
    must agree with the tool's own Dice.
  - Wall seconds of the registration call alone (no imports, no I/O, no label
    warping), the CPU seconds (user + system) of that call, which a busy
    shared machine distorts less than wall seconds, and peak memory: the peak resident set (VmHWM, the ``ru_maxrss``
    of this process alone) of the worker process right after the call
    (includes the interpreter and the libraries; the resident set before the
    call is in the JSON as ``rss_before_mib``).
* Threads: every tool gets ``--threads`` (default: all cores) through its own
  setting (torch, ITK's global default, greedy ``-threads``, elastix).
* ``affine-only`` is the shared pre-alignment with no deformable stage.
* Ratios: ours (``nodeo*``, ``cli``) over ``greedy``, ``greedy-full`` and ANTs, per pair
  and task, in the same run (median over pairs): wall seconds, CPU seconds and peak memory.
  ``cli / greedy`` compares the whole command with greedy's deformable stage alone,
  ``cli / greedy-full`` with greedy's affine + deformable stages (issue 12's two targets).

``--profile`` runs one 2 mm mono NODEO registration in this process under
``torch.profiler`` and prints the top ops by self CPU time, the share of the
backward pass and the optimizer, and the time per pyramid level.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if importlib.util.find_spec("itk_odereg") is None:   # running from a source checkout
    sys.path.insert(1, str(HERE.parent))
import _synth  # noqa: E402

ALL_METHODS = ("nodeo", "greedy", "ants", "elastix")
#: end-to-end modes, only with --methods: the itk-odereg command line and greedy with its own affine stage
EXTRA_METHODS = ("cli", "greedy-full")
#: ratios "ours / peer" (wall, CPU, peak memory) for every pair of these that ran
OURS = ("nodeo", "cli")
PEERS = ("greedy", "greedy-full", "ants")
TASKS = ("mono", "multi")


# ============================================================================ availability


def method_available(name: str) -> tuple[bool, str]:
    base = name.split(":")[0]
    if base == "nodeo":
        return importlib.util.find_spec("itk_odereg") is not None, "itk_odereg"
    if base in ("greedy", "greedy-full"):
        return importlib.util.find_spec("picsl_greedy") is not None, "pip install picsl-greedy"
    if base == "cli":
        return cli_command() is not None, "pip install -e . (the itk-odereg console script)"
    if base == "ants":
        return importlib.util.find_spec("ants") is not None, "pip install antspyx"
    if base == "elastix":
        try:
            return importlib.util.find_spec("itk.ElastixPython") is not None, "pip install itk-elastix"
        except (ImportError, ValueError):
            return False, "pip install itk-elastix"
    return False, f"unknown method {name!r}"


def cli_command() -> "list[str] | None":
    """How the ``cli`` method starts ``itk-odereg``: the console script installed next to this
    interpreter (what ``pip install`` puts on the user's PATH), else the one on PATH; None if neither."""
    script = Path(sys.executable).with_name("itk-odereg")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("itk-odereg")
    return [found] if found else None


# ============================================================================ pairs


def subjects_in(label_dir: Path) -> list[int]:
    out = []
    for p in sorted(label_dir.glob("subject*.nii.gz")):
        digits = p.name[len("subject"):].split(".")[0]
        if digits.isdigit():
            out.append(int(digits))
    return out


def pair_list(subjects: list[int], n: int) -> list[tuple[int, int]]:
    """Deterministic (moving, fixed) pairs of different subjects: 01->02, 03->04, ..., then 02->03, ..."""
    out: list[tuple[int, int]] = []
    k = len(subjects)
    for offset in range(1, k):
        for start in (0, 1):
            for i in range(start, k, 2):
                pair = (subjects[i], subjects[(i + offset) % k])
                if pair not in out:
                    out.append(pair)
                if len(out) >= n:
                    return out
    return out


def _affine_to_json(t: sitk.AffineTransform) -> dict:
    return {"matrix": list(t.GetMatrix()), "translation": list(t.GetTranslation()), "center": list(t.GetCenter())}


def _affine_from_json(d: dict) -> sitk.AffineTransform:
    t = sitk.AffineTransform(3)
    t.SetMatrix(d["matrix"])
    t.SetTranslation(d["translation"])
    t.SetCenter(d["center"])
    return t


def prepare(label_dir: Path, work: Path, moving: int, fixed: int, task: str, resolution: float, seed: int) -> Path:
    """Write a pre-aligned, cropped pair to ``work`` (cached); return its folder."""
    pair_dir = work / f"s{moving:02d}_to_s{fixed:02d}_{task}_{resolution:g}mm"
    if (pair_dir / "pair.json").exists():
        return pair_dir
    pair_dir.mkdir(parents=True, exist_ok=True)
    affine_file = work / f"affine_s{moving:02d}_to_s{fixed:02d}.json"
    t0 = time.perf_counter()
    if affine_file.exists():
        affine = _affine_from_json(json.loads(affine_file.read_text()))
    else:
        affine = _synth.affine_align(_synth.load_labels(_synth.subject_path(label_dir, fixed)),
                                     _synth.load_labels(_synth.subject_path(label_dir, moving)), seed=seed)
        affine_file.write_text(json.dumps(_affine_to_json(affine)))
    pair = _synth.prepare_pair(label_dir, moving, fixed, task, resolution, seed=seed, affine=affine)
    for name in ("fixed", "moving", "fixed_labels", "moving_labels"):
        sitk.WriteImage(getattr(pair, name), str(pair_dir / f"{name}.nii"))
    info = {"moving_subject": pair.moving_subject, "fixed_subject": pair.fixed_subject, "task": task,
            "fixed_contrast": pair.fixed_contrast, "moving_contrast": pair.moving_contrast,
            "resolution_mm": resolution, "size": list(pair.fixed.GetSize()), "seed": seed,
            "affine": _affine_to_json(pair.affine), "prepare_seconds": time.perf_counter() - t0}
    (pair_dir / "pair.json").write_text(json.dumps(info, indent=1))
    return pair_dir


# ============================================================================ workers (one per subprocess)


def _proc_status_mib(key: str) -> "float | None":
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _rss_mib() -> float:
    value = _proc_status_mib("VmRSS")
    return float("nan") if value is None else value


def _peak_mib() -> float:
    """Peak resident set of this process (VmHWM). Not ru_maxrss: Linux carries ru_maxrss over
    fork + exec, so a worker would report its parent's resident set when that is larger."""
    value = _proc_status_mib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 if value is None else value   # KiB on Linux


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _write_field(field: sitk.Image, out: Path) -> None:
    sitk.WriteImage(sitk.Cast(field, sitk.sitkVectorFloat32), str(out / "field.nii"))


def _field_of(transform: sitk.Transform, reference: sitk.Image) -> sitk.Image:
    return sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, reference.GetSize(),
                                             reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection())


def worker_nodeo(pair: Path, out: Path, task: str, threads: int, variant: dict) -> dict:
    import torch

    torch.set_num_threads(threads)
    from itk_odereg.registration.driver import register
    from itk_odereg.registration.nodeo import NODEOSettings

    fixed = sitk.ReadImage(str(pair / "fixed.nii"))
    moving = sitk.ReadImage(str(pair / "moving.nii"))
    metric = variant.get("metric", "lncc" if task == "mono" else "ngf")
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in variant.items() if k != "env"}
    settings = NODEOSettings(**dict({"metric": metric}, **overrides)) if overrides else None
    rss0 = _rss_mib()
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    result = register(fixed, moving, affine=None, metric=metric, resolution_mm=None, nodeo=settings)
    cpu = _cpu_seconds() - c0
    seconds = time.perf_counter() - t0
    peak = _peak_mib()
    labels = sitk.ReadImage(str(pair / "moving_labels.nii"))
    warped = sitk.Resample(labels, fixed, result.transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    sitk.WriteImage(warped, str(out / "warped_labels.nii"))
    _write_field(_field_of(result.transform, fixed), out)
    history = [r for r in result.loss_history if r.get("stage") == "nodeo"]
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak, "rss_before_mib": rss0, "timings": result.timings,
            "engine_folding_percent": result.folding_percent,
            "final_similarity": history[-1]["similarity"] if history else None,
            "settings": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in vars(settings or NODEOSettings(metric=metric)).items()}}


def _greedy_warp_labels(g, labels: sitk.Image, threads: int, transforms: str, log, out: Path) -> None:
    """The moving labels resliced onto the fixed grid by greedy itself (nearest neighbour, ``-r transforms``
    in antsApplyTransforms order), written as ``warped_labels.nii``."""
    g.execute(f"-d 3 -threads {threads} -rf fix -ri NN -rm lab resliced -r {transforms}",
              lab=sitk.Cast(labels, sitk.sitkFloat64), resliced=None, out=log, err=log)
    warped = sitk.Cast(sitk.Round(g["resliced"]), labels.GetPixelID())
    sitk.WriteImage(warped, str(out / "warped_labels.nii"))


def worker_greedy(pair: Path, out: Path, task: str, threads: int, variant: dict) -> dict:
    import io

    from picsl_greedy import Greedy3D

    fixed = sitk.ReadImage(str(pair / "fixed.nii"))
    moving = sitk.ReadImage(str(pair / "moving.nii"))
    labels = sitk.ReadImage(str(pair / "moving_labels.nii"))
    metric = variant.get("metric", "NCC 2x2x2" if task == "mono" else "NMI")
    iterations = variant.get("iterations", "100x50x20")
    extra = variant.get("extra", "")
    cmd = f"-d 3 -threads {threads} -i fix mov -o warp -n {iterations} -m {metric} {extra}"
    g = Greedy3D()
    log = io.StringIO()
    rss0 = _rss_mib()
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    g.execute(cmd, fix=fixed, mov=moving, warp=None, out=log, err=log)
    cpu = _cpu_seconds() - c0
    seconds = time.perf_counter() - t0
    peak = _peak_mib()
    _greedy_warp_labels(g, labels, threads, "warp", log, out)
    warp = g["warp"]
    transform = sitk.DisplacementFieldTransform(sitk.Cast(warp, sitk.sitkVectorFloat64))
    _write_field(_field_of(transform, fixed), out)
    (out / "greedy.log").write_text(log.getvalue())
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak, "rss_before_mib": rss0, "command": cmd}


def worker_greedy_full(pair: Path, out: Path, task: str, threads: int, variant: dict) -> dict:
    """greedy's own affine stage, then its deformable stage from that affine, timed together.

    Affine: ``-a -dof 12 -ia-image-centers -n 100x50x10 -m <metric>`` (greedy's documented affine
    recipe: image centres, 12 dof, 3 levels); deformable: ``-it affine -n 100x50x20 -m <metric>``
    with greedy's default smoothing, as ``greedy``. Metric ``NCC 2x2x2`` (mono) or ``NMI`` (multi)
    for both stages. The images and transforms stay in memory (no I/O in the timing).
    """
    import io

    from picsl_greedy import Greedy3D

    fixed = sitk.ReadImage(str(pair / "fixed.nii"))
    moving = sitk.ReadImage(str(pair / "moving.nii"))
    labels = sitk.ReadImage(str(pair / "moving_labels.nii"))
    metric = variant.get("metric", "NCC 2x2x2" if task == "mono" else "NMI")
    affine_iterations = variant.get("affine_iterations", "100x50x10")
    iterations = variant.get("iterations", "100x50x20")
    extra = variant.get("extra", "")
    affine_cmd = (f"-d 3 -threads {threads} -a -dof 12 -ia-image-centers -i fix mov -o affine "
                  f"-n {affine_iterations} -m {metric}")
    deformable_cmd = f"-d 3 -threads {threads} -i fix mov -it affine -o warp -n {iterations} -m {metric} {extra}"
    g = Greedy3D()
    log = io.StringIO()
    rss0 = _rss_mib()
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    g.execute(affine_cmd, fix=fixed, mov=moving, affine=None, out=log, err=log)
    t_affine = time.perf_counter() - t0
    c_affine = _cpu_seconds() - c0
    g.execute(deformable_cmd, warp=None, out=log, err=log)
    cpu = _cpu_seconds() - c0
    seconds = time.perf_counter() - t0
    peak = _peak_mib()
    # greedy applies "-r warp affine" as antsApplyTransforms does: a fixed point goes through the warp, then the affine.
    _greedy_warp_labels(g, labels, threads, "warp affine", log, out)
    # greedy's own composition of the two (-rc: the whole map as one displacement field, LPS mm).
    g.execute(f"-d 3 -threads {threads} -rf fix -rc composed -r warp affine", composed=None, out=log, err=log)
    _write_field(g["composed"], out)
    (out / "greedy.log").write_text(log.getvalue())
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak, "rss_before_mib": rss0,
            "affine_seconds": t_affine, "affine_cpu_seconds": c_affine,
            "deformable_seconds": seconds - t_affine, "affine_ras": np.asarray(g["affine"]).tolist(),
            "command": [affine_cmd, deformable_cmd]}


def worker_cli(pair: Path, out: Path, task: str, threads: int, variant: dict, timeout: float = 1800.0) -> dict:
    """``itk-odereg register`` as a user runs it, in a child process timed from start to exit.

    ``itk-odereg register -f fixed.nii -m moving.nii -o OUT/pair_ --metric lncc|ngf --quiet
    --threads N`` with every other option at its default (the affine stage included, 2 mm
    working grid), the environment of :func:`thread_env`. Wall seconds run from just before
    ``Popen`` to the child's exit (``os.wait4``); CPU seconds (user + system) and the peak resident
    set (``ru_maxrss``) are the child's alone, from the ``rusage`` of ``os.wait4``. This worker
    imports only numpy and SimpleITK before it starts the child: Linux starts a child's
    ``ru_maxrss`` at the resident set of its parent at ``exec``, which is recorded as
    ``spawner_peak_mib`` (the child's figure is only its own when larger).
    """
    import threading

    command = cli_command()
    if command is None:
        raise RuntimeError("itk-odereg: console script not found")
    metric = variant.get("metric", "lncc" if task == "mono" else "ngf")
    prefix = str(out / "pair_")
    cmd = command + ["register", "-f", str(pair / "fixed.nii"), "-m", str(pair / "moving.nii"), "-o", prefix,
                     "--metric", metric, "--quiet", "--threads", str(threads)] + [str(a) for a in variant.get("args", [])]
    spawner_peak = _peak_mib()
    with open(out / "cli.log", "w") as log:
        start_epoch = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=thread_env(threads), cwd=str(out))
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here: Popen must not wait again
    if proc.returncode != 0:
        raise RuntimeError(f"itk-odereg exit {proc.returncode}: {(out / 'cli.log').read_text()[-1500:]}")
    written = sorted(out.glob("pair_*"))
    newest = max(p.stat().st_mtime for p in written)
    fixed = sitk.ReadImage(str(pair / "fixed.nii"))
    labels = sitk.ReadImage(str(pair / "moving_labels.nii"))
    # The ANTs-style pair a user passes to antsApplyTransforms: a fixed point goes through the warp, then the affine.
    affine = sitk.ReadTransform(prefix + "0GenericAffine.mat")
    warp = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(prefix + "1Warp.nii.gz"), sitk.sitkVectorFloat64))
    composite = sitk.CompositeTransform([affine, warp])   # sitk applies the last added first: p -> A(W(p))
    warped = sitk.Resample(labels, fixed, composite, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    sitk.WriteImage(warped, str(out / "warped_labels.nii"))
    _write_field(_field_of(composite, fixed), out)
    via_h5 = sitk.Resample(labels, fixed, sitk.ReadTransform(prefix + "Composite.h5"), sitk.sitkNearestNeighbor, 0,
                           labels.GetPixelID())
    agree_h5 = float((sitk.GetArrayViewFromImage(via_h5) == sitk.GetArrayViewFromImage(warped)).mean())
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "user_seconds": usage.ru_utime, "system_seconds": usage.ru_stime,
            "peak_mib": usage.ru_maxrss / 1024.0,   # KiB on Linux
            "spawner_peak_mib": spawner_peak, "peak_is_the_childs": usage.ru_maxrss / 1024.0 > spawner_peak,
            "rss_before_mib": None, "last_output_seconds": newest - start_epoch,
            "outputs": [p.name for p in written], "labels_agree_with_composite_h5": agree_h5,
            "command": cmd}


def worker_ants(pair: Path, out: Path, task: str, threads: int, variant: dict) -> dict:
    import ants

    fixed = ants.image_read(str(pair / "fixed.nii"))
    moving = ants.image_read(str(pair / "moving.nii"))
    labels = ants.image_read(str(pair / "moving_labels.nii"))
    kwargs = dict(type_of_transform="SyNOnly", initial_transform="Identity",
                  syn_metric="CC" if task == "mono" else "mattes", syn_sampling=2 if task == "mono" else 32,
                  reg_iterations=(100, 70, 20), outprefix=str(out / "ants_"))
    kwargs.update(variant)
    rss0 = _rss_mib()
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    reg = ants.registration(fixed, moving, **kwargs)
    cpu = _cpu_seconds() - c0
    seconds = time.perf_counter() - t0
    peak = _peak_mib()
    fwd = list(reg["fwdtransforms"])
    warped = ants.apply_transforms(fixed, labels, fwd, interpolator="nearestNeighbor")
    ants.image_write(warped, str(out / "warped_labels.nii"))
    # antsApplyTransforms applies the last listed transform first, as does a sitk composite built in list order.
    composite = sitk.CompositeTransform(3)
    for f in fwd:
        if f.endswith((".nii", ".nii.gz")):
            composite.AddTransform(sitk.DisplacementFieldTransform(
                sitk.Cast(sitk.ReadImage(f), sitk.sitkVectorFloat64)))
        else:
            composite.AddTransform(sitk.ReadTransform(f))
    _write_field(_field_of(composite, sitk.ReadImage(str(pair / "fixed.nii"))), out)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak, "rss_before_mib": rss0, "fwdtransforms": [Path(f).name for f in fwd],
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items() if k != "outprefix"}}


def worker_elastix(pair: Path, out: Path, task: str, threads: int, variant: dict) -> dict:
    import itk

    fixed = itk.imread(str(pair / "fixed.nii"), itk.F)
    moving = itk.imread(str(pair / "moving.nii"), itk.F)
    labels = itk.imread(str(pair / "moving_labels.nii"), itk.F)
    params = itk.ParameterObject.New()
    pmap = params.GetDefaultParameterMap("bspline")
    for k, v in variant.items():
        pmap[k] = [str(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    params.AddParameterMap(pmap)
    # Threads through ITK's global default (also set in the environment): the number_of_threads
    # keyword of itk.elastix_registration_method crashes itk-elastix 0.25.4 (segmentation fault).
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    rss0 = _rss_mib()
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    _, result_params = itk.elastix_registration_method(fixed, moving, parameter_object=params,
                                                       log_to_console=False)
    cpu = _cpu_seconds() - c0
    seconds = time.perf_counter() - t0
    peak = _peak_mib()
    n = result_params.GetNumberOfParameterMaps()
    result_params.SetParameter(n - 1, "FinalBSplineInterpolationOrder", "0")
    result_params.SetParameter(n - 1, "ResampleInterpolator", "FinalNearestNeighborInterpolator")
    warped = itk.transformix_filter(labels, result_params, log_to_console=False)
    warped_np = np.rint(itk.array_view_from_image(warped)).astype(np.int16)
    warped_sitk = sitk.GetImageFromArray(warped_np)
    warped_sitk.CopyInformation(sitk.ReadImage(str(pair / "fixed_labels.nii")))
    sitk.WriteImage(warped_sitk, str(out / "warped_labels.nii"))
    field = itk.transformix_deformation_field(moving, result_params, log_to_console=False)
    field_sitk = sitk.GetImageFromArray(np.asarray(itk.array_view_from_image(field), dtype=np.float64), isVector=True)
    field_sitk.CopyInformation(warped_sitk)
    _write_field(field_sitk, out)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak, "rss_before_mib": rss0,
            "parameter_map": {k: list(v) for k, v in pmap.items()}}


WORKERS = {"nodeo": worker_nodeo, "greedy": worker_greedy, "ants": worker_ants, "elastix": worker_elastix,
           "cli": worker_cli, "greedy-full": worker_greedy_full}


def run_worker(args) -> None:
    pair, out = Path(args.pair_dir), Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variant = json.loads(args.variant) if args.variant else {}
    base = args.worker.split(":")[0]
    kwargs = {"timeout": args.timeout} if base == "cli" else {}
    info = WORKERS[base](pair, out, args.task, args.threads, variant, **kwargs)
    info["method"] = args.worker
    info["variant"] = variant
    (out / "result.json").write_text(json.dumps(info, indent=1, default=str))


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update({"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)})
    return env


def launch(method: str, variant: dict, pair_dir: Path, task: str, threads: int, timeout: float) -> tuple[Path, dict]:
    out = pair_dir / method.replace(":", "_")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--pair-dir", str(pair_dir),
           "--out-dir", str(out), "--task", task, "--threads", str(threads), "--variant", json.dumps(variant),
           "--label-maps", "-", "--timeout", str(0.95 * timeout)]
    t0 = time.perf_counter()
    with open(out / "worker.log", "w") as log:
        try:
            env = dict(thread_env(threads), **{str(k): str(v) for k, v in variant.get("env", {}).items()})
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                                  cwd=out)   # transformix writes deformationField.nii into the working folder
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    if rc != 0 or not (out / "result.json").exists():
        tail = (out / "worker.log").read_text()[-2000:]
        return out, {"error": f"worker exit {rc}", "log_tail": tail, "process_seconds": wall}
    info = json.loads((out / "result.json").read_text())
    info["process_seconds"] = wall
    return out, info


# ============================================================================ metrics


def regularity(field_path: Path) -> dict:
    import torch

    from itk_odereg import ops
    from itk_odereg.core.grid import ImageGrid
    from itk_odereg.transforms import physical_displacement_to_voxel

    image = sitk.ReadImage(str(field_path))
    grid = ImageGrid.from_sitk(image)
    field = sitk.GetArrayFromImage(image).astype(np.float64)
    u = torch.from_numpy(physical_displacement_to_voxel(field, grid))[None]
    det = ops.jacobian_determinant(u)[0].numpy()
    positive = det[det > 0]
    norm = np.linalg.norm(field, axis=-1)
    return {"fold_percent": float((det <= 0).mean() * 100.0),
            "sd_logj": float(np.log(positive).std()) if positive.size else float("nan"),
            "detj_min": float(det.min()), "detj_max": float(det.max()),
            "mean_displacement_mm": float(norm.mean()), "max_displacement_mm": float(norm.max())}


def evaluate(pair_dir: Path, out: Path, labels_set: list[int], fixed_labels: np.ndarray) -> dict:
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped_labels.nii")))
    per = _synth.dice_per_structure(fixed_labels, warped, labels_set)
    metrics = {"dice_mean": float(np.mean(list(per.values()))), "dice": per}
    metrics.update(regularity(out / "field.nii"))
    moving_labels = sitk.ReadImage(str(pair_dir / "moving_labels.nii"))
    field = sitk.Cast(sitk.ReadImage(str(out / "field.nii")), sitk.sitkVectorFloat64)
    via = sitk.Resample(moving_labels, sitk.ReadImage(str(pair_dir / "fixed_labels.nii")),
                        sitk.DisplacementFieldTransform(field), sitk.sitkNearestNeighbor, 0)
    metrics["dice_via_field"] = float(np.mean(list(
        _synth.dice_per_structure(fixed_labels, sitk.GetArrayFromImage(via), labels_set).values())))
    return metrics


# ============================================================================ report


def _fmt_pm(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.{digits}f}±{s:.{digits}f}"


def summarize(records: list[dict], methods: list[str], tasks: list[str]) -> dict:
    summary: dict = {}
    for task in tasks:
        for method in ["affine-only"] + methods:
            rows = [r for r in records if r["task"] == task and r["method"] == method and "error" not in r]
            if not rows:
                continue
            def col(key):
                return [r[key] for r in rows if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
            summary[f"{method}|{task}"] = {
                "method": method, "task": task, "pairs": len(rows),
                "dice": col("dice_mean"), "fold_percent": col("fold_percent"), "sd_logj": col("sd_logj"),
                "seconds": col("seconds"), "cpu_seconds": col("cpu_seconds"), "peak_mib": col("peak_mib"),
            }
    ratios: dict = {}
    for task in tasks:
        for ours in [m for m in methods if m.split(":")[0] in OURS]:
            for peer in PEERS:
                per_pair = []
                for r in records:
                    if r["task"] != task or r["method"] != ours or "error" in r:
                        continue
                    p = [q for q in records if q["task"] == task and q["method"] == peer and q["pair"] == r["pair"]
                         and "error" not in q]
                    if p:
                        peak = (r["peak_mib"] / p[0]["peak_mib"]) if r.get("peak_mib") and p[0].get("peak_mib") \
                            else float("nan")
                        per_pair.append((r["seconds"] / p[0]["seconds"],
                                         r["cpu_seconds"] / max(p[0]["cpu_seconds"], 1e-9), peak))
                if per_pair:
                    wall, cpu, peak = ([x[i] for x in per_pair] for i in range(3))
                    ratios[f"{ours}/{peer}|{task}"] = {
                        "wall_per_pair": wall, "wall_median": statistics.median(wall),
                        "cpu_per_pair": cpu, "cpu_median": statistics.median(cpu),
                        "peak_per_pair": peak, "peak_median": statistics.median(peak)}
    return {"rows": summary, "time_ratios": ratios}


def print_table(summary: dict, tasks: list[str]) -> None:
    rows = summary["rows"]
    header = f"{'method':<16s} {'task':<6s} {'n':>2s} {'Dice mean±sd':>14s} {'fold %':>14s} {'SD logJ':>12s} " \
             f"{'wall s':>14s} {'CPU s':>14s} {'peak MiB':>9s}"
    print(header)
    print("-" * len(header))
    for task in tasks:
        for key, r in rows.items():
            if r["task"] != task:
                continue
            secs = _fmt_pm(r["seconds"], 1) if r["seconds"] else "-"
            cpus = _fmt_pm(r["cpu_seconds"], 1) if r["cpu_seconds"] else "-"
            peak = f"{max(r['peak_mib']):.0f}" if r["peak_mib"] else "-"
            fold = _fmt_pm(r["fold_percent"], 3) if r["fold_percent"] else "-"
            sdl = _fmt_pm(r["sd_logj"], 3) if r["sd_logj"] else "-"
            print(f"{r['method']:<16s} {task:<6s} {r['pairs']:>2d} {_fmt_pm(r['dice']):>14s} {fold:>14s} {sdl:>12s} "
                  f"{secs:>14s} {cpus:>14s} {peak:>9s}")
    if summary["time_ratios"]:
        print("\nRatios, ours / peer's, same run: median over pairs [per pair], wall seconds, CPU seconds and "
              "peak memory:")
        for key, v in summary["time_ratios"].items():
            def fmt(name):
                return f"{v[name + '_median']:6.2f} [{', '.join(f'{x:.2f}' for x in v[name + '_per_pair'])}]"
            print(f"  {key:<28s} wall {fmt('wall')}   CPU {fmt('cpu')}   peak {fmt('peak')}")


# ============================================================================ profile


def run_profile(args, pair_dir: Path) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    from itk_odereg.registration.driver import register
    from itk_odereg.registration.nodeo import NODEOSettings

    fixed = sitk.ReadImage(str(pair_dir / "fixed.nii"))
    moving = sitk.ReadImage(str(pair_dir / "moving.nii"))
    variant = json.loads(args.profile_variant) if args.profile_variant else {}
    settings = NODEOSettings(**dict({"metric": "lncc"}, **{k: (tuple(v) if isinstance(v, list) else v)
                                                         for k, v in variant.items()}))
    stamps: list = []

    def progress(record):
        if record.get("stage") == "nodeo":
            stamps.append((record["level"], time.perf_counter()))

    # One profiled run; the progress callback stamps every iteration for the time per level.
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        t0 = time.perf_counter()
        result = register(fixed, moving, affine=None, metric="lncc", resolution_mm=None, nodeo=settings,
                          progress=progress)
        prof_wall = time.perf_counter() - t0
    print(f"profiled register(): {prof_wall:.1f} s (profiler overhead included); stages: " +
          ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items()))
    last = {"t": t0}
    per_level: dict = {}
    for level, t in stamps:
        per_level.setdefault(level, [0.0, 0])
        per_level[level][0] += t - last["t"]
        per_level[level][1] += 1
        last["t"] = t
    for level, (sec, n) in sorted(per_level.items()):
        print(f"  level {level} (factor {settings.levels[level]:g}): {n} iterations, {sec:.2f} s, "
              f"{1000 * sec / max(n, 1):.1f} ms/iteration")
    events = prof.events()
    backward = sum(e.cpu_time_total for e in events if e.name.startswith("autograd::engine::evaluate_function"))
    optim = sum(e.cpu_time_total for e in events if e.name.startswith("Optimizer.step"))
    total_us = prof_wall * 1e6
    print(f"\nbackward pass {backward / 1e6:.1f} s "
          f"({100 * backward / total_us:.0f} %), optimizer steps {optim / 1e6:.1f} s ({100 * optim / total_us:.0f} %)")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows)
    print(table)
    if args.json:
        ka = prof.key_averages()
        rows = sorted(({"name": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "cpu_total_s": e.cpu_time_total / 1e6,
                        "calls": e.count} for e in ka), key=lambda r: -r["self_cpu_s"])[: args.profile_rows]
        Path(args.json).write_text(json.dumps({
            "profiled_seconds": prof_wall, "timings": result.timings,
            "backward_seconds": backward / 1e6, "optimizer_seconds": optim / 1e6,
            "per_level": {str(k): {"seconds": v[0], "iterations": v[1]} for k, v in per_level.items()},
            "top_ops": rows, "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
        }, indent=1, default=str))
        print(f"wrote {args.json}")


# ============================================================================ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label-maps", required=True, help="folder with subjectNN.nii.gz label maps")
    p.add_argument("--resolution", type=float, choices=(1.0, 2.0), default=2.0, help="mm (box 160x192x160 mm)")
    p.add_argument("--pairs", type=int, default=2, help="number of inter-subject pairs")
    p.add_argument("--methods", default=None,
                   help=f"comma list of {','.join(ALL_METHODS + EXTRA_METHODS)} (default: all installed of "
                        f"{','.join(ALL_METHODS)}; the end-to-end modes {','.join(EXTRA_METHODS)} only when listed)")
    p.add_argument("--contrast", default="mono,multi", help="comma list of mono, multi")
    p.add_argument("--nodeo-variant", action="append", default=[], metavar="NAME=JSON",
                   help="extra NODEO run 'nodeo:NAME' with NODEOSettings(**JSON) (a key \"env\": environment "
                        "variables of that run's process); repeatable")
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--quick", action="store_true", help="1 pair, mono, 2 mm (smoke run)")
    p.add_argument("--profile", action="store_true", help="profile one 2 mm mono NODEO registration and exit")
    p.add_argument("--profile-variant", default=None, help="JSON NODEOSettings overrides for --profile")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per method run")
    p.add_argument("--work-dir", default=None, help="keep prepared pairs and outputs here (reused when present)")
    # internal: one method in a fresh process
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--pair-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--task", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.contrast, args.resolution = 1, "mono", 2.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    label_dir = Path(args.label_maps)
    subjects = subjects_in(label_dir)
    if len(subjects) < 2:
        raise SystemExit(f"--label-maps {label_dir}: needs at least two subjectNN.nii.gz files")
    table = label_dir / "labels_table.txt"
    structures = _synth.read_structures(table) if table.exists() else None
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="odereg-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)

    if args.profile:
        moving, fixed = pair_list(subjects, 1)[0]
        pair_dir = prepare(label_dir, work, moving, fixed, "mono", 2.0, args.seed)
        print(f"profile: subject{moving:02d} -> subject{fixed:02d}, mono, 2 mm, {args.threads} threads")
        run_profile(args, pair_dir)
        return 0

    tasks = [t.strip() for t in args.contrast.split(",") if t.strip()]
    for t in tasks:
        if t not in TASKS:
            raise SystemExit(f"--contrast: unknown task {t!r} (mono, multi)")
    requested = [m.strip() for m in args.methods.split(",")] if args.methods else list(ALL_METHODS)
    methods: list[str] = []
    variants: dict[str, dict] = {}
    for m in requested:
        ok, hint = method_available(m)
        if ok:
            methods.append(m)
            variants[m] = {}
        elif args.methods:
            raise SystemExit(f"--methods: {m} is not available ({hint})")
        else:
            print(f"skipping {m}: not installed ({hint})")
    for spec in args.nodeo_variant:
        name, _, js = spec.partition("=")
        methods.append(f"nodeo:{name}")
        variants[f"nodeo:{name}"] = json.loads(js)

    pairs = pair_list(subjects, args.pairs)
    print(f"pairs (moving -> fixed): {', '.join(f'{a:02d}->{b:02d}' for a, b in pairs)}; tasks {tasks}; "
          f"{args.resolution:g} mm; methods {methods}; {args.threads} threads; work dir {work}", flush=True)
    records: list[dict] = []
    for index, (moving, fixed) in enumerate(pairs):
        for task in tasks:
            t0 = time.perf_counter()
            pair_dir = prepare(label_dir, work, moving, fixed, task, args.resolution, args.seed)
            fixed_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(pair_dir / "fixed_labels.nii")))
            moving_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(pair_dir / "moving_labels.nii")))
            struct = structures or sorted(int(v) for v in np.unique(fixed_labels) if _synth.is_brain_structure(int(v)))
            labels_set = _synth.structures_present(fixed_labels, moving_labels, struct)
            base = {"pair": index, "moving": f"subject{moving:02d}", "fixed": f"subject{fixed:02d}", "task": task}
            per = _synth.dice_per_structure(fixed_labels, moving_labels, labels_set)
            records.append(dict(base, method="affine-only", dice_mean=float(np.mean(list(per.values()))), dice=per,
                                fold_percent=0.0, sd_logj=0.0, seconds=None, peak_mib=None))
            print(f"[{index}] {moving:02d}->{fixed:02d} {task}: prepared in {time.perf_counter() - t0:.1f} s, "
                  f"{len(labels_set)} structures, affine-only Dice {records[-1]['dice_mean']:.3f}", flush=True)
            for method in methods:
                out, info = launch(method, variants[method], pair_dir, task, args.threads, args.timeout)
                rec = dict(base, **info)
                rec["method"] = method
                if "error" not in info:
                    rec.update(evaluate(pair_dir, out, labels_set, fixed_labels))
                    print(f"    {method:<16s} Dice {rec['dice_mean']:.3f} (via field {rec['dice_via_field']:.3f})  "
                          f"fold {rec['fold_percent']:.3f} %  SD logJ {rec['sd_logj']:.3f}  "
                          f"{rec['seconds']:.1f} s ({rec['cpu_seconds']:.1f} CPU s)  peak {rec['peak_mib']:.0f} MiB"
                          + (f"  (last file written at {rec['last_output_seconds']:.1f} s)"
                             if rec.get("last_output_seconds") is not None else ""), flush=True)
                else:
                    print(f"    {method:<16s} FAILED: {info['error']}\n{info['log_tail']}", flush=True)
                records.append(rec)

    summary = summarize(records, methods, tasks)
    print()
    print_table(summary, tasks)
    print("\nDice: mean over pairs of each pair's mean Dice over the brain structures present in both label maps, "
          "± SD over pairs. fold %: voxels of the box with det J <= 0. SD logJ over det J > 0. seconds: the "
          "registration call alone (cli: the itk-odereg process from start to exit; greedy-full: greedy's affine "
          "and deformable stages); CPU s: user + system CPU seconds of that call or process (less sensitive to other "
          "processes on a shared machine than wall seconds). peak MiB: peak resident set (VmHWM) of the method's own "
          "process (cli: ru_maxrss of the itk-odereg process).")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": {k: v for k, v in vars(args).items() if k not in ("worker", "pair_dir", "out_dir", "task", "variant")},
            "pairs": [{"moving": f"subject{a:02d}", "fixed": f"subject{b:02d}"} for a, b in pairs],
            "methods": methods, "variants": variants, "records": records, "summary": summary,
            "structures": structures, "cpu_count": os.cpu_count(),
        }, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
