"""MS-ODENet against NODEO, msodenet+nodeo and ANTs on held-out brains and on the paper's synthetic protocols.

Run with:

    python benchmarks/msodenet.py --label-maps ../shared/data/label_maps [--model-dir MODELS] [--json out.json]

Tasks (2 mm, box 160x192x160 mm, validation subjects only: 09 and 10 by default):

* ``mono`` / ``multi``: the inter-subject pairs of ``benchmarks/accuracy.py``
  (T1-like to T1-like, T1-like to T2-like), affinely pre-aligned; every
  method runs its deformable stage only.
* ``rigid75``: a subject's T1-like image against itself moved by a random
  rigid transformation: rotations U(-75, 75) degrees about each axis (sitk's
  Euler3DTransform, about the box centre; up to about 140 degrees in all) and
  translations U(-20, 20) mm (the paper's Table 1 protocol). The fixed image
  is the moved copy, so the true fixed-to-moving map is known.
* ``bspline8``: likewise with a cubic B-spline deformation whose control
  points (20 mm apart) are displaced by N(0, (8 mm)^2) per coordinate.

Methods: ``msodenet:R``, ``msodenet:B``, ``msodenet:R+B`` (trained models,
``--model-dir`` with ``rigid.pt`` and ``bspline.pt``; default: the models
shipped in the package; through ``register(method="msodenet", model=...)``),
``msodenet:B0`` (an untrained B-spline model: the classical MIND-demons force
term alone, which training starts from; shows what training added),
``msodenet:D0`` (the dense parameterization, untrained: no dense model is
shipped; its force term, as B0's), ``nodeo``,
``msodenet+nodeo`` (all with ``affine=None``), and ANTs (antspyx): SyN
("SyNOnly", CC or Mattes as in accuracy.py) on the deformable tasks, "Rigid"
on ``rigid75``.

Metrics: mean Dice over the brain structures, RMSE(phi) in mm over brain
voxels (synthetic tasks: the distance between the estimated and the true map),
% of voxels with det J <= 0, seconds per pair (the registration call), and the
peak resident memory growth of the call (MiB; Linux). All methods run in this
one process, one after the other, with the same thread count.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _synth  # noqa: E402
import accuracy  # noqa: E402

METHODS = ("msodenet:R", "msodenet:B0", "msodenet:D0", "msodenet:B", "msodenet:R+B", "nodeo", "msodenet+nodeo",
           "ants")
TASKS = ("mono", "multi", "rigid75", "bspline8")


def _reset_peak() -> float:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return accuracy._rss_mib()


MODEL_DIR = Path(".")


def _untrained(parameterization: str, work: Path) -> Path:
    import torch

    from itk_odereg.msodenet import MSODENet, save_model

    path = work.parent / f"{parameterization}_untrained.pt"
    if not path.exists():
        torch.manual_seed(0)  # the zero-initialized output layers make the rate independent of the seed
        save_model(MSODENet(parameterization), path, {"resolution_mm": 2.0, "iterations": 0})
    return path


def run_method(method: str, fixed: sitk.Image, moving: sitk.Image, task: str, work: Path) -> tuple[sitk.Transform, dict]:
    """Register and return the fixed-to-moving transform and the cost."""
    model = None
    if method.startswith("msodenet:"):
        rigid, bspline = str(MODEL_DIR / "rigid.pt"), str(MODEL_DIR / "bspline.pt")
        variant = method.split(":")[1]
        if variant in ("B0", "D0"):  # written before the clock starts
            model = str(_untrained({"B0": "bspline", "D0": "dense"}[variant], work))
        else:
            model = {"R": rigid, "B": bspline, "R+B": f"{rigid}+{bspline}"}[variant]
    rss0 = _reset_peak()
    t0 = time.perf_counter()
    metric = "lncc" if task != "multi" else "ngf"
    if model is not None:
        from itk_odereg import register

        result = register(fixed, moving, method="msodenet", model=model, affine=None, resolution_mm=None)
        transform = result.transform
    elif method in ("nodeo", "msodenet+nodeo"):
        from itk_odereg import register

        kw = {"model": f"{MODEL_DIR / 'rigid.pt'}+{MODEL_DIR / 'bspline.pt'}"} if method != "nodeo" else {}
        result = register(fixed, moving, method=method, metric=metric, affine=None, resolution_mm=None, **kw)
        transform = result.transform
    elif method == "ants":
        import ants

        f = ants.from_numpy(sitk.GetArrayFromImage(fixed).T.copy(), origin=fixed.GetOrigin(),
                            spacing=fixed.GetSpacing(), direction=np.array(fixed.GetDirection()).reshape(3, 3))
        m = ants.from_numpy(sitk.GetArrayFromImage(moving).T.copy(), origin=moving.GetOrigin(),
                            spacing=moving.GetSpacing(), direction=np.array(moving.GetDirection()).reshape(3, 3))
        prefix = str(work / "ants_")
        if task == "rigid75":
            out = ants.registration(f, m, type_of_transform="Rigid", outprefix=prefix)
        else:
            out = ants.registration(f, m, type_of_transform="SyNOnly", initial_transform="Identity",
                                    syn_metric="CC" if task != "multi" else "mattes",
                                    syn_sampling=2 if task != "multi" else 32, reg_iterations=(100, 70, 20),
                                    outprefix=prefix)
        transform = sitk.CompositeTransform(3)
        for path in out["fwdtransforms"]:  # first listed is applied last
            if path.endswith(".mat"):
                transform.AddTransform(sitk.ReadTransform(path))
            else:
                field = sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64)
                transform.AddTransform(sitk.DisplacementFieldTransform(field))
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - t0
    return transform, {"seconds": seconds, "peak_mib": accuracy._peak_mib() - rss0}


def displacement(transform: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, reference.GetSize(),
                                              reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection())
    return sitk.GetArrayFromImage(field)


def synthetic_task(image: sitk.Image, labels: sitk.Image, task: str, rng: np.random.Generator):
    """(fixed, fixed_labels, true fixed->moving transform): fixed = moving o T."""
    if task == "rigid75":
        centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
        angles = np.radians(rng.uniform(-75, 75, 3))
        truth = sitk.Euler3DTransform(centre, *angles.tolist(), tuple(rng.uniform(-20, 20, 3).tolist()))
    else:
        # Mesh cells of about 20 mm over the box.
        truth = sitk.BSplineTransformInitializer(image, [max(1, int(round(s * h / 20.0)))
                                                         for s, h in zip(image.GetSize(), image.GetSpacing())])
        truth.SetParameters(rng.normal(0, 8.0, len(truth.GetParameters())).tolist())
    fixed = sitk.Resample(image, image, truth, sitk.sitkLinear, 0.0)
    fixed_labels = sitk.Resample(labels, labels, truth, sitk.sitkNearestNeighbor, 0)
    return fixed, fixed_labels, truth


def evaluate(transform, fixed, fixed_labels, moving_labels, structures, truth=None) -> dict:
    import torch

    from itk_odereg import ops
    from itk_odereg.core.grid import ImageGrid
    from itk_odereg.transforms import physical_displacement_to_voxel

    warped = sitk.Resample(moving_labels, fixed, transform, sitk.sitkNearestNeighbor, 0, moving_labels.GetPixelID())
    fl = sitk.GetArrayFromImage(fixed_labels)
    dice = _synth.dice_per_structure(fl, sitk.GetArrayFromImage(warped), structures)
    field = displacement(transform, fixed)
    u = torch.from_numpy(physical_displacement_to_voxel(field, ImageGrid.from_sitk(fixed)))[None]
    det = ops.jacobian_determinant(u)[0].numpy()
    out = {"dice": float(np.mean(list(dice.values()))), "fold_percent": float((det <= 0).mean() * 100)}
    if truth is not None:
        error = np.linalg.norm(field - displacement(truth, fixed), axis=-1)[fl > 0]
        out["rmse_phi_mm"] = float(np.sqrt((error**2).mean()))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label-maps", required=True, type=Path, help="folder with subjectNN.nii.gz")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="folder with rigid.pt and bspline.pt written by `itk-odereg train` "
                             "(default: the weights shipped in the package)")
    parser.add_argument("--subjects", type=int, nargs=2, default=[9, 10], help="validation subjects (default 9 10)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--work-dir", type=Path, default=Path("msodenet-bench"), help="prepared pairs and outputs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args(argv)
    global MODEL_DIR
    if args.model_dir is None:
        from itk_odereg.msodenet.pretrained import WEIGHTS_DIR

        args.model_dir = WEIGHTS_DIR
    MODEL_DIR = args.model_dir
    import torch

    torch.set_num_threads(args.threads)
    tasks = args.tasks.split(",")
    methods = args.methods.split(",")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    a, b = args.subjects
    records = []
    for task in tasks:
        pairs = [(a, b), (b, a)]
        for moving_s, fixed_s in pairs:
            base = "mono" if task in ("rigid75", "bspline8") else task
            pair_dir = accuracy.prepare(args.label_maps, args.work_dir, moving_s, fixed_s, base, 2.0, args.seed)
            fixed = sitk.ReadImage(str(pair_dir / "fixed.nii"))
            fixed_labels = sitk.ReadImage(str(pair_dir / "fixed_labels.nii"))
            moving = sitk.ReadImage(str(pair_dir / "moving.nii"))
            moving_labels = sitk.ReadImage(str(pair_dir / "moving_labels.nii"))
            truth = None
            if task in ("rigid75", "bspline8"):
                # One subject against a known transformation of itself.
                moving, moving_labels = fixed, fixed_labels
                fixed, fixed_labels, truth = synthetic_task(moving, moving_labels, task, rng)
            fl, ml = sitk.GetArrayFromImage(fixed_labels), sitk.GetArrayFromImage(moving_labels)
            structures = [s for s in np.unique(fl) if s != 0 and s in set(np.unique(ml)) and (fl == s).sum() > 20]
            for method in methods:
                if method == "ants" and not accuracy.method_available("ants")[0]:
                    continue
                out = pair_dir / f"msodenet_{task}_{method.replace(':', '_').replace('+', '_')}"
                out.mkdir(exist_ok=True)
                try:
                    transform, cost = run_method(method, fixed, moving, task, out)
                    metrics = evaluate(transform, fixed, fixed_labels, moving_labels, structures, truth)
                except Exception as err:  # noqa: BLE001 - report and go on
                    metrics, cost = {"error": f"{type(err).__name__}: {err}"}, {}
                record = {"task": task, "pair": f"{moving_s:02d}->{fixed_s:02d}", "method": method, **metrics, **cost}
                records.append(record)
                line = " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in record.items() if k not in ("task", "pair", "method"))
                print(f"[{task} {record['pair']}] {method:15s} {line}", flush=True)
    print("\nmean over pairs:")
    print(f"{'task':9s} {'method':15s} {'Dice':>6s} {'RMSE mm':>8s} {'fold %':>7s} {'s/pair':>7s} {'peak MiB':>9s}")
    for task in tasks:
        for method in methods:
            rows = [r for r in records if r["task"] == task and r["method"] == method and "error" not in r]
            if not rows:
                continue
            mean = lambda k: np.mean([r[k] for r in rows]) if all(k in r for r in rows) else float("nan")  # noqa: E731
            print(f"{task:9s} {method:15s} {mean('dice'):6.3f} {mean('rmse_phi_mm'):8.2f} {mean('fold_percent'):7.3f} "
                  f"{mean('seconds'):7.1f} {mean('peak_mib'):9.0f}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
