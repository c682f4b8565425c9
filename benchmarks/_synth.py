"""Synthetic MR-like images and registration pairs from FreeSurfer label maps (benchmark helper).

Used by ``benchmarks/accuracy.py``; nothing here is part of the package.

* :func:`synthesize` gives a label map a T1-like or T2-like image: one mean
  intensity per label (jittered per image), Gaussian noise, a slight blur and a
  smooth multiplicative bias field, all seeded.
* :func:`prepare_pair` builds one inter-subject pair: a shared affine
  pre-alignment computed with SimpleITK on brain-only images derived from the
  labels, then both images and both label maps resampled onto one cropped box
  around the fixed brain (160x192x160 mm, sampled at 1 or 2 mm).

Intensities follow ``/work/shared/data/label_maps/README.md``: T1-like, white
matter brightest, then deep grey nuclei, cortex, CSF dark; T2-like, CSF
brightest, grey matter above white matter. Labels >= 500 are SynthSeg's
extra-cerebral classes, which carry no names; their values were chosen from
where each class lies in the head (size, distance to the brain, position):
e.g. 506 is a pair of small anterior blobs next to the orbits (eyes: dark T1,
bright T2), 515 a thin shell around the brain (skull: dark in both), 511 a
thicker outer layer (scalp and fat: bright T1), 507 the large remaining soft
tissue, 509 anterior and inferior cavities (air: dark in both).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

# ----------------------------------------------------------------- intensities

# label: (T1-like, T2-like), on a scale where T1 white matter ~0.85 and T2 CSF ~1.
_BRAIN = {
    0: (0.0, 0.0),            # background (air)
    2: (0.85, 0.33), 41: (0.85, 0.33),     # cerebral white matter
    3: (0.55, 0.62), 42: (0.55, 0.62),     # cerebral cortex
    4: (0.15, 1.0), 43: (0.15, 1.0),       # lateral ventricles
    5: (0.17, 0.97), 44: (0.17, 0.97),     # inferior lateral ventricles
    14: (0.15, 1.0), 15: (0.15, 1.0), 72: (0.15, 1.0),  # 3rd, 4th, 5th ventricle
    24: (0.18, 0.95),                      # CSF
    7: (0.80, 0.36), 46: (0.80, 0.36),     # cerebellum white matter
    8: (0.58, 0.60), 47: (0.58, 0.60),     # cerebellum cortex
    10: (0.70, 0.45), 49: (0.70, 0.45),    # thalamus
    11: (0.60, 0.56), 50: (0.60, 0.56),    # caudate
    12: (0.63, 0.48), 51: (0.63, 0.48),    # putamen
    13: (0.74, 0.38), 52: (0.74, 0.38),    # pallidum
    17: (0.56, 0.64), 53: (0.56, 0.64),    # hippocampus
    18: (0.57, 0.62), 54: (0.57, 0.62),    # amygdala
    26: (0.60, 0.55), 58: (0.60, 0.55),    # accumbens
    28: (0.75, 0.42), 60: (0.75, 0.42),    # ventral DC
    16: (0.78, 0.40),                      # brain stem
    25: (0.50, 0.70), 57: (0.50, 0.70),    # lesions
    30: (0.62, 0.40), 62: (0.62, 0.40),    # vessels
    85: (0.82, 0.35),                      # optic chiasm
}
_EXTRA = {
    502: (0.35, 0.45),
    506: (0.15, 0.95),   # eyes (vitreous)
    507: (0.45, 0.30),   # soft tissue / muscle
    508: (0.50, 0.35),   # optic nerve, extra-ocular muscle
    509: (0.03, 0.03),   # air cavities
    511: (0.90, 0.70),   # scalp fat
    512: (0.40, 0.40),
    514: (0.30, 0.60),
    515: (0.10, 0.08),   # skull
    516: (0.70, 0.50),   # marrow / diploe
    530: (0.55, 0.50),
}
_DEFAULT_BRAIN = (0.60, 0.58)   # any other brain label (< 500): grey-matter-like

CONTRASTS = ("t1", "t2")


def label_intensity(label: int, contrast: str) -> float:
    """Mean intensity of ``label`` in ``contrast`` ("t1" or "t2")."""
    k = CONTRASTS.index(contrast)
    if label in _BRAIN:
        return _BRAIN[label][k]
    if label in _EXTRA:
        return _EXTRA[label][k]
    if label >= 500:   # an unnamed extra-cerebral class: a fixed pseudo-random tissue value
        h = zlib.crc32(f"{label}:{contrast}".encode()) / 2**32
        return 0.2 + 0.5 * h
    return _DEFAULT_BRAIN[k]


def is_brain_structure(label: int) -> bool:
    return 0 < label < 500


# ----------------------------------------------------------------- label maps


def load_labels(path: str | Path) -> sitk.Image:
    """Read a label map as int32, reoriented so its axes follow LPS (index i -> L, j -> P, k -> S)."""
    image = sitk.ReadImage(str(path))
    image = sitk.DICOMOrient(image, "LPS")
    return sitk.Cast(image, sitk.sitkInt32)


def read_structures(table: str | Path) -> dict[int, str]:
    """Brain structures of ``labels_table.txt`` (label -> name), without 0 and labels >= 500."""
    out: dict[int, str] = {}
    started = False
    for line in Path(table).read_text().splitlines():
        parts = line.split(None, 1)
        if not parts:
            continue
        if parts[0] == "labels":
            started = True
            continue
        if started and parts[0].isdigit():
            label = int(parts[0])
            if is_brain_structure(label):
                out[label] = parts[1].strip() if len(parts) > 1 else str(label)
    return out


# ----------------------------------------------------------------- synthesis


def _legendre(n: int, degree: int) -> np.ndarray:
    x = np.linspace(-1.0, 1.0, n)
    out = [np.ones_like(x), x]
    for k in range(1, degree):
        out.append(((2 * k + 1) * x * out[k] - k * out[k - 1]) / (k + 1))
    return np.stack(out[: degree + 1]).astype(np.float32)


def bias_field(shape_zyx: tuple[int, int, int], rng: np.random.Generator, strength: float = 0.15,
               degree: int = 3) -> np.ndarray:
    """Smooth multiplicative field exp(p(x, y, z)), p a random polynomial of total degree <= ``degree``
    scaled so that max |p| = ``strength`` (about +-15 % by default)."""
    bz, by, bx = (_legendre(n, degree) for n in shape_zyx)
    c = rng.standard_normal((degree + 1,) * 3).astype(np.float32)
    a, b, cc = np.indices(c.shape)
    c[(a + b + cc) > degree] = 0.0
    c[0, 0, 0] = 0.0
    # p[z, y, x] = sum_abc c[a, b, c] bz[a, z] by[b, y] bx[c, x], contracted one axis at a time.
    t = np.einsum("abc,cx->abx", c, bx)
    t = np.einsum("abx,by->ayx", t, by)
    p = np.einsum("ayx,az->zyx", t, bz)
    p *= strength / max(float(np.abs(p).max()), 1e-6)
    return np.exp(p, out=p)


def synthesize(labels: sitk.Image, contrast: str, seed: int, *, noise: float = 0.03, blur_mm: float = 0.6,
               bias: float = 0.15, jitter: float = 0.04) -> sitk.Image:
    """T1-like or T2-like float32 image of a label map, on the label map's grid.

    Args:
        labels: integer label map (FreeSurfer / SynthSeg values).
        contrast: "t1" or "t2".
        seed: seeds the per-label jitter, the noise and the bias field.
        noise: Gaussian noise SD relative to the brightest tissue (magnitude image: |signal + noise|).
        blur_mm: SD of the Gaussian blur (point spread), mm.
        bias: maximum |log| of the multiplicative bias field.
        jitter: relative SD of a per-image random change of every label's mean.
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"synthesize(): contrast must be one of {CONTRASTS}, got {contrast!r}")
    rng = np.random.default_rng(seed)
    lab = sitk.GetArrayViewFromImage(labels)
    values = np.unique(lab)
    lut = np.zeros(int(values.max()) + 1, dtype=np.float32)
    for v in values:
        mean = label_intensity(int(v), contrast)
        lut[int(v)] = mean * (1.0 + jitter * rng.standard_normal()) if v != 0 else 0.0
    img = lut[np.asarray(lab)]
    img += noise * rng.standard_normal(img.shape, dtype=np.float32)
    np.abs(img, out=img)
    out = sitk.GetImageFromArray(img)
    out.CopyInformation(labels)
    if blur_mm > 0:
        out = sitk.SmoothingRecursiveGaussian(out, blur_mm)
    arr = sitk.GetArrayFromImage(out)
    arr *= bias_field(arr.shape, rng, bias)
    result = sitk.GetImageFromArray(arr.astype(np.float32, copy=False))
    result.CopyInformation(labels)
    return result


def brain_image(labels: sitk.Image, smooth_mm: float = 1.0) -> sitk.Image:
    """Noise-free T1-like image of the brain alone (labels 1..499 except the CSF label 24, which
    reaches far down the spinal canal), smoothed: the input of the shared affine step."""
    lab = sitk.GetArrayViewFromImage(labels)
    values = np.unique(lab)
    lut = np.zeros(int(values.max()) + 1, dtype=np.float32)
    for v in values:
        if is_brain_structure(int(v)) and v != 24:
            lut[int(v)] = label_intensity(int(v), "t1")
    out = sitk.GetImageFromArray(lut[np.asarray(lab)])
    out.CopyInformation(labels)
    return sitk.SmoothingRecursiveGaussian(out, smooth_mm) if smooth_mm > 0 else out


# ----------------------------------------------------------------- the shared affine step and the box


def affine_align(fixed_labels: sitk.Image, moving_labels: sitk.Image, seed: int = 0,
                 work_mm: float = 3.0) -> sitk.Transform:
    """Affine transform (fixed -> moving points, LPS mm) between two subjects' brains.

    SimpleITK on noise-free brain-only images derived from the labels (same
    look-up table for both, so mean squares is the right metric), resampled to
    ``work_mm``: centred initializer (MOMENTS), a similarity stage, then a full
    affine stage, each with shrink factors 2/1 and regular-step gradient descent
    on all voxels (deterministic; ``seed`` is unused and kept for the cache key).
    """
    def prep(labels):
        img = brain_image(labels, smooth_mm=1.0)
        spacing = [work_mm] * 3
        size = [int(round(s * sp / work_mm)) for s, sp in zip(img.GetSize(), img.GetSpacing())]
        origin = img.TransformContinuousIndexToPhysicalPoint([(work_mm / sp - 1) / 2 for sp in img.GetSpacing()])
        img = sitk.SmoothingRecursiveGaussian(img, work_mm / 2.355)
        return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, img.GetDirection(), 0.0,
                             sitk.sitkFloat32)

    fixed = prep(fixed_labels)
    moving = prep(moving_labels)

    def run(initial, iterations):
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMeanSquares()
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=iterations,
                                                     relaxationFactor=0.85, gradientMagnitudeTolerance=1e-8)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([2, 1])
        reg.SetSmoothingSigmasPerLevel([work_mm, 0.0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        reg.SetInitialTransform(initial, inPlace=False)
        out = reg.Execute(fixed, moving)
        return out.GetNthTransform(0) if isinstance(out, sitk.CompositeTransform) else out

    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Similarity3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    sim = sitk.Similarity3DTransform(run(init, 300))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(sim.GetMatrix())
    affine.SetTranslation(sim.GetTranslation())
    affine.SetCenter(sim.GetCenter())
    return sitk.AffineTransform(run(affine, 300))


BOX_MM = (160, 192, 160)   # x (L-R), y (A-P), z (S-I) extent of the common box, mm


def crop_box(fixed_labels: sitk.Image, resolution_mm: float, box_mm=BOX_MM) -> sitk.Image:
    """Reference grid (empty image) of the common box: ``box_mm`` around the centre of the fixed
    brain's bounding box (labels 1..499 except 24), sampled at ``resolution_mm``, LPS axes."""
    lab = sitk.GetArrayViewFromImage(fixed_labels)
    mask = (lab > 0) & (lab < 500) & (lab != 24)
    idx = np.argwhere(mask)
    centre_idx = ((idx.min(0) + idx.max(0)) / 2.0)[::-1]          # (i, j, k)
    centre = np.array(fixed_labels.TransformContinuousIndexToPhysicalPoint(centre_idx.tolist()))
    direction = np.reshape(fixed_labels.GetDirection(), (3, 3))
    size = [int(round(b / resolution_mm)) for b in box_mm]
    half = np.array([(n - 1) * resolution_mm / 2.0 for n in size])
    origin = centre - direction @ half
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing([float(resolution_mm)] * 3)
    ref.SetOrigin(origin.tolist())
    ref.SetDirection(direction.ravel().tolist())
    return ref


def _resample(image: sitk.Image, ref: sitk.Image, transform: sitk.Transform, labels: bool) -> sitk.Image:
    if labels:
        return sitk.Resample(image, ref, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkInt16)
    sigma = np.sqrt(max(ref.GetSpacing()[0] ** 2 - image.GetSpacing()[0] ** 2, 0.0)) / 2.355   # anti-alias
    if sigma > 0.05:
        image = sitk.SmoothingRecursiveGaussian(image, float(sigma))
    return sitk.Resample(image, ref, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


@dataclass
class Pair:
    fixed: sitk.Image             # float32 on the box
    moving: sitk.Image            # float32, pre-aligned onto the box
    fixed_labels: sitk.Image      # int16 on the box
    moving_labels: sitk.Image     # int16, pre-aligned onto the box (nearest)
    affine: sitk.AffineTransform  # fixed -> moving, the shared pre-alignment
    fixed_subject: str
    moving_subject: str
    fixed_contrast: str
    moving_contrast: str


def subject_path(label_dir: str | Path, subject: int) -> Path:
    return Path(label_dir) / f"subject{subject:02d}.nii.gz"


def prepare_pair(label_dir: str | Path, moving_subject: int, fixed_subject: int, task: str,
                 resolution_mm: float, seed: int, affine: Optional[sitk.Transform] = None) -> Pair:
    """One pre-aligned, cropped inter-subject pair.

    Args:
        label_dir: folder with ``subjectNN.nii.gz``.
        moving_subject, fixed_subject: subject numbers (different).
        task: "mono" (T1-like vs T1-like, different seeds) or "multi" (moving T1-like, fixed T2-like).
        resolution_mm: 1 or 2 (box 160x192x160 or 80x96x80 voxels).
        seed: base seed of both syntheses.
        affine: a precomputed shared affine (fixed -> moving); computed when None.
    """
    if moving_subject == fixed_subject:
        raise ValueError("prepare_pair(): an inter-subject pair needs two different subjects")
    fixed_lab = load_labels(subject_path(label_dir, fixed_subject))
    moving_lab = load_labels(subject_path(label_dir, moving_subject))
    if affine is None:
        affine = affine_align(fixed_lab, moving_lab, seed=seed)
    ref = crop_box(fixed_lab, resolution_mm)
    fixed_contrast = "t1" if task == "mono" else "t2"
    fixed_img = synthesize(fixed_lab, fixed_contrast, seed=seed * 1000 + fixed_subject * 10 + 1)
    moving_img = synthesize(moving_lab, "t1", seed=seed * 1000 + moving_subject * 10 + 2)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    return Pair(
        fixed=_resample(fixed_img, ref, identity, labels=False),
        moving=_resample(moving_img, ref, affine, labels=False),
        fixed_labels=_resample(fixed_lab, ref, identity, labels=True),
        moving_labels=_resample(moving_lab, ref, affine, labels=True),
        affine=sitk.AffineTransform(affine),
        fixed_subject=f"subject{fixed_subject:02d}",
        moving_subject=f"subject{moving_subject:02d}",
        fixed_contrast=fixed_contrast,
        moving_contrast="t1",
    )


def structures_present(fixed_labels: np.ndarray, moving_labels: np.ndarray, structures) -> list[int]:
    """The labels of ``structures`` present in both pre-aligned label maps of a pair (the Dice set)."""
    both = set(np.unique(fixed_labels).tolist()) & set(np.unique(moving_labels).tolist())
    return sorted(int(l) for l in structures if l in both)


def dice_per_structure(fixed: np.ndarray, warped: np.ndarray, labels) -> dict[int, float]:
    """Dice of every label of ``labels`` (0 where a method lost a structure entirely)."""
    out = {}
    for label in labels:
        ma, mb = fixed == label, warped == label
        denom = int(ma.sum()) + int(mb.sum())
        out[int(label)] = float(2.0 * np.logical_and(ma, mb).sum() / denom) if denom else 0.0
    return out
