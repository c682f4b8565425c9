"""Reliability: nothing silently wrong, nothing half-written, the same answer twice (issue 14).

One test (at least) per cause: complete output sets or none (full disk, interrupts, stale
members, unwritable places), inputs refused where they cannot be right (truncated files,
NIfTI NaN, sheared directions, degenerate sizes), reproducible seeding, and the input checks
of the exported TorchScript module. Each failed before its fix.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from itk_odereg.adapters.ants import ANTS_FILE_NAMES, write_ants_files, write_registration
from itk_odereg.io_utils import OutputSet, atomic_write, check_writable, write_image

from synthetic_images import oblique_pair, write_oblique_pair

CLI = [sys.executable, "-m", "itk_odereg"]
QUICK = ["--iterations", "3", "2", "1", "--quiet"]


def _cli(*args, timeout=300):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _hidden(directory):
    return sorted(name for name in os.listdir(directory) if name.startswith("."))


@contextlib.contextmanager
def _tmpfs(path, options):
    """A small tmpfs mounted at ``path`` (root only; the test is skipped where mounting is not allowed)."""
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); "
                    "test_short_write_is_refused_and_names_the_path covers the same code without one")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def _image(size=(12, 10, 8), value=None):
    arr = np.random.default_rng(0).random(size[::-1]).astype(np.float32) if value is None else \
        np.full(size[::-1], value, np.float32)
    return sitk.GetImageFromArray(arr)


# ------------------------------------------------------------------------------------------ outputs


def test_short_write_is_refused_and_names_the_path(tmp_path):
    # ITK's NIfTI writer reports a full disk on stderr and returns: a short file must not be moved into place.
    dest = tmp_path / "out.nii"

    def short_writer(tmp):
        with open(tmp, "wb") as f:
            f.write(b"\0" * 100)

    with pytest.raises(OSError, match=r"incomplete write of '.*out\.nii' \(100 of at least 4188 bytes\)"):
        atomic_write(dest, short_writer, min_bytes=348 + 12 * 10 * 8 * 4, caller="t")
    assert not dest.exists() and _hidden(tmp_path) == []


def test_a_writer_error_names_the_users_path_not_the_temporary_one(tmp_path):
    with pytest.raises(RuntimeError) as info:
        write_image(_image(), tmp_path / "x.foo", caller="apply")
    assert "x.foo" in str(info.value) and ".tmp-" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_full_disk_leaves_no_file_and_says_so(tmp_path):
    with _tmpfs(tmp_path / "tiny", "size=64k") as tiny:
        with pytest.raises(OSError, match=r"no space left on device while writing '.*big\.nii'"):
            write_image(_image((40, 40, 40)), tiny / "big.nii", caller="t")
        with pytest.raises(OSError, match=r"no space left on device while writing '.*big\.nii\.gz'"):
            write_image(_image((60, 60, 60)), tiny / "big.nii.gz", caller="t")
        assert os.listdir(tiny) == []


def test_register_on_a_full_disk_refuses_before_the_work(tmp_path):
    paths = write_oblique_pair(tmp_path)
    with _tmpfs(tmp_path / "tiny", "size=16k") as tiny:
        done = _cli("register", "-f", paths["fixed"], "-m", paths["moving"], "-o", str(tiny / "r_"), *QUICK)
        assert done.returncode == 1
        assert "no space left on device for the outputs in" in done.stderr
        assert os.listdir(tiny) == []


def test_read_only_output_place_is_found_before_the_work(tmp_path):
    paths = write_oblique_pair(tmp_path)
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        t0 = time.perf_counter()
        done = _cli("register", "-f", paths["fixed"], "-m", paths["moving"], "-o", str(ro / "r_"),
                    "--iterations", "500", "500", "500", "--quiet")
        assert done.returncode == 1 and time.perf_counter() - t0 < 60
        assert f"cannot write into the output directory '{ro}'" in done.stderr and "Read-only" in done.stderr
        assert ".tmp-" not in done.stderr and ".probe-" not in done.stderr


def test_check_writable_refuses_unknown_image_extensions_up_front(tmp_path):
    with pytest.raises(ValueError, match=r"no image writer for the extension of '.*x\.foo' \('\.foo'\)"):
        check_writable([tmp_path / "x.foo"], "apply", image_format=True)
    check_writable([tmp_path / "x.nii.gz"], "apply", image_format=True)
    assert os.listdir(tmp_path) == []


def _items(fail_at=None):
    field = sitk.Image([6, 5, 4], sitk.sitkVectorFloat64, 3)
    items = {"warp": field, "inverse_warp": field, "affine": sitk.AffineTransform(3), "warped": _image((6, 5, 4))}
    if fail_at is not None:
        def fail():
            raise RuntimeError("simulated failure")
        items[fail_at] = fail
    return items


def test_an_output_set_is_written_whole_or_not_at_all(tmp_path):
    prefix = str(tmp_path / "s_")
    write_ants_files(prefix, _items())
    before = {name: open(prefix + name, "rb").read() for name in ("1Warp.nii.gz", "0GenericAffine.mat",
                                                                   "Warped.nii.gz", "1InverseWarp.nii.gz")}
    # A rerun that fails part-way (here: while making the warped image) changes none of the old set.
    items = _items(fail_at="warped")
    items["affine"] = sitk.AffineTransform([1, 0.1, 0, 0, 1, 0, 0, 0, 1], [1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_ants_files(prefix, items)
    assert {name: open(prefix + name, "rb").read() for name in before} == before
    assert _hidden(tmp_path) == []


def test_an_interrupt_during_writing_leaves_the_old_set_and_no_temporary_files(tmp_path):
    prefix = str(tmp_path / "s_")

    def interrupted():
        raise KeyboardInterrupt

    items = _items()
    items["inverse_warp"] = interrupted
    with pytest.raises(KeyboardInterrupt):
        write_ants_files(prefix, items)
    assert os.listdir(tmp_path) == []


def test_sigterm_while_writing_cleans_up_like_ctrl_c(tmp_path):
    # A child writes a set whose third member takes long; SIGTERM then arrives mid-set.
    script = f"""
import sys, time, SimpleITK as sitk
from itk_odereg.cli import _terminate_as_exception, _Terminated
from itk_odereg.adapters.ants import write_ants_files
_terminate_as_exception()
field = sitk.Image([30, 30, 30], sitk.sitkVectorFloat64, 3)
def slow():
    print("writing", flush=True)
    time.sleep(60)
    return field
try:
    write_ants_files({str(tmp_path / 's_')!r}, {{"warp": field, "inverse_warp": field, "warped": slow}}, threads=1)
except _Terminated:
    sys.exit(143)
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    assert any(name.startswith(".s_") for name in os.listdir(tmp_path))   # members staged under temporary names
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 143
    assert os.listdir(tmp_path) == []


def test_a_rerun_removes_stale_members_so_a_prefix_never_mixes_two_registrations(tmp_path):
    from itk_odereg.core.image import load_image
    from itk_odereg.registration.engine import register_images
    from itk_odereg.registration.options import RegistrationOptions

    fixed_img, moving_img = oblique_pair()
    fixed, moving = load_image(fixed_img, "fixed"), load_image(moving_img, "moving")
    reg = register_images(fixed, moving, RegistrationOptions.create(iterations=(2, 1, 1)))
    prefix = str(tmp_path / "p_")
    write_registration(reg, prefix, fixed=fixed, moving=moving)
    assert os.path.exists(prefix + "Composite.h5")
    with pytest.warns(UserWarning, match=r"removed '.*p_Composite\.h5', left by an earlier run"):
        write_registration(reg, prefix, fixed=fixed, moving=moving, roles=("affine", "warp", "inverse_warp"))
    assert sorted(os.listdir(tmp_path)) == sorted("p_" + ANTS_FILE_NAMES[r] for r in ("affine", "warp", "inverse_warp"))


def test_output_set_commit_is_all_members(tmp_path):
    out = OutputSet("t")
    for name in ("a.txt", "b.txt"):
        out.write(tmp_path / name, lambda tmp, n=name: open(tmp, "w").write(n))
    assert os.listdir(tmp_path) != [] and not (tmp_path / "a.txt").exists()
    out.commit()
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]


# ------------------------------------------------------------------------------------------- inputs


def _truncated_copy(src, dest):
    data = open(src, "rb").read()
    open(dest, "wb").write(data[: len(data) // 2])


def test_truncated_nii_gz_is_refused_everywhere(tmp_path):
    from itk_odereg import register

    paths = write_oblique_pair(tmp_path)
    cut = str(tmp_path / "cut.nii.gz")
    _truncated_copy(paths["moving"], cut)
    # SimpleITK reads it without a word (the missing half as zeros) ...
    assert sitk.ReadImage(cut).GetSize() == sitk.ReadImage(paths["moving"]).GetSize()
    # ... every front end refuses it.
    with pytest.raises(ValueError, match=r"register\(\): 'moving' is truncated or corrupt: '.*cut\.nii\.gz'"):
        register(paths["fixed"], cut)
    done = _cli("register", "-f", paths["fixed"], "-m", cut, "-o", str(tmp_path / "o_"), *QUICK)
    assert done.returncode == 1 and "moving image (-m) is truncated or corrupt" in done.stderr
    field = sitk.Image(sitk.ReadImage(paths["fixed"]).GetSize(), sitk.sitkVectorFloat64, 3)
    field.CopyInformation(sitk.ReadImage(paths["fixed"]))
    sitk.WriteImage(field, str(tmp_path / "w.nii.gz"))
    _truncated_copy(tmp_path / "w.nii.gz", tmp_path / "wcut.nii.gz")
    done = _cli("apply", "-i", paths["moving"], "-r", paths["fixed"], "-t", str(tmp_path / "wcut.nii.gz"),
                "-o", str(tmp_path / "a.nii.gz"))
    assert done.returncode == 1 and "transform (-t) is truncated or corrupt" in done.stderr
    assert not (tmp_path / "a.nii.gz").exists()


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_nan_and_inf_are_refused_although_itk_reads_them_as_zero(tmp_path, ext):
    from itk_odereg import register

    fixed, moving = oblique_pair()
    arr = sitk.GetArrayFromImage(moving)
    arr[3, 4, 5], arr[1, 1, 1] = np.nan, np.inf
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(moving)
    path = str(tmp_path / f"nan{ext}")
    sitk.WriteImage(bad, path)
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(path))).all()   # what ITK makes of it
    with pytest.raises(ValueError, match=r"'moving' has 1 NaN and 1 infinite voxel\(s\) of \d+ in '.*nan\.nii"):
        register(fixed, path)


def test_a_sheared_direction_is_refused(tmp_path):
    from itk_odereg import register

    fixed, moving = oblique_pair()
    sheared = sitk.Image(moving)
    sheared.SetDirection([1, 0.3, 0, 0, 1, 0, 0, 0, 1])
    path = str(tmp_path / "sheared.nrrd")
    sitk.WriteImage(sheared, path)
    with pytest.raises(ValueError, match=r"'moving' has a direction matrix that is not orthonormal"):
        register(fixed, path)
    done = _cli("register", "-f", path, "-m", str(tmp_path / "sheared.nrrd"), "-o", str(tmp_path / "o_"), *QUICK)
    assert done.returncode == 1 and "not orthonormal" in done.stderr


def test_a_tiny_image_is_refused():
    from itk_odereg import register

    tiny = _image((3, 3, 3))
    with pytest.raises(ValueError, match=r"'fixed' has only 3 voxel\(s\) along an axis .* at least 4 per axis"):
        register(tiny, tiny)


def test_an_implausible_affine_is_reported():
    from itk_odereg.registration.engine import ImplausibleTransformWarning, _check_affine

    with pytest.warns(ImplausibleTransformWarning, match=r"scales .*determinant 0\.063"):
        _check_affine(np.diag([1.0, 1.0, 0.063]), "register()")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_affine(np.diag([1.1, 0.9, 1.05]), "register()")


def test_model_with_a_method_that_ignores_it_is_refused(tmp_path):
    paths = write_oblique_pair(tmp_path)
    done = _cli("register", "-f", paths["fixed"], "-m", paths["moving"], "-o", str(tmp_path / "o_"),
                "--method", "nodeo", "--model", "rigid", *QUICK)
    assert done.returncode == 2 or done.returncode == 1
    assert "--method nodeo does not use one" in done.stderr


def test_apply_warns_when_it_interpolates_an_integer_label_image(tmp_path):
    fixed, _ = oblique_pair()
    labels = sitk.Cast(sitk.ReadImage(write_oblique_pair(tmp_path)["fixed"]) > 50, sitk.sitkUInt8)
    sitk.WriteImage(labels, str(tmp_path / "labels.nii.gz"))
    sitk.WriteTransform(sitk.AffineTransform(3), str(tmp_path / "id.mat"))
    args = ["apply", "-i", str(tmp_path / "labels.nii.gz"), "-r", str(tmp_path / "labels.nii.gz"),
            "-t", str(tmp_path / "id.mat")]
    done = _cli(*args, "-o", str(tmp_path / "lin.nii.gz"))
    assert done.returncode == 0 and "has integer voxels (8-bit unsigned integer)" in done.stderr
    assert "--interpolation nearest" in done.stderr
    done = _cli(*args, "-o", str(tmp_path / "nn.nii.gz"), "--interpolation", "nearest")
    assert done.returncode == 0 and "warning" not in done.stderr


# --------------------------------------------------------------------------------------- anisotropy


def test_pyramid_levels_shrink_a_thick_axis_less():
    from itk_odereg.core.grid import ImageGrid
    from itk_odereg.registration.pyramid import pyramid_level

    level = pyramid_level((41, 401, 401), (5.0, 0.5, 0.5), 4.0)      # tensor order: z thick
    np.testing.assert_allclose(level.spacing_mm, (5.0, 2.0, 2.0))
    work = ImageGrid((401, 401, 41), (0.5, 0.5, 5.0)).corner_aligned(4.0)
    np.testing.assert_allclose(work.spacing, (2.0, 2.0, 5.0))
    # isotropic grids: exactly the factor on every axis, as before
    assert pyramid_level((81, 97, 81), (2.0, 2.0, 2.0), 2.0).shape == (41, 49, 41)


# ------------------------------------------------------------------------------------ the same answer


def _pair():
    rng = np.random.default_rng(0)
    a = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(rng.random((20, 20, 20)).astype(np.float32)), 2.0)
    b = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(rng.random((20, 20, 20)).astype(np.float32)), 2.0)
    return a, b


def test_seed_none_is_unseeded_and_the_callers_rng_is_left_alone():
    from itk_odereg import register

    a, b = _pair()
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    runs = [register(a, b, iterations=(6, 3, 2), seed=s) for s in (None, None, 0, 0)]
    assert torch.equal(torch.get_rng_state(), state) and torch.initial_seed() == 1234
    fields = [r.deformable_field_mm for r in runs]
    assert np.array_equal(fields[2], fields[3])                 # a seed repeats exactly
    assert not np.array_equal(fields[0], fields[1])             # None: two different runs
    assert not np.array_equal(fields[0], fields[2])             # ... and not seed 0
    seeds = [r.registration.seed for r in runs]
    assert seeds[2:] == [0, 0] and seeds[0] != seeds[1]
    again = register(a, b, iterations=(6, 3, 2), seed=seeds[0])   # the recorded seed repeats the unseeded run
    assert np.array_equal(again.deformable_field_mm, fields[0])


@pytest.mark.parametrize("options, match", [
    ({"iterations": (0, 0, 0)}, "leaves every level without iterations"),
    ({"iterations": 0}, "leaves every level without iterations"),
    ({"resolution_mm": 1000}, r"'resolution_mm' 1000 mm gives a working grid of size \(\d, \d, \d\) .* spanning \[40.0, 42.0, 44.2\] mm"),
])
def test_options_that_would_skip_the_deformable_stage_are_refused(options, match):
    from itk_odereg import register

    fixed, moving = oblique_pair()
    with pytest.raises(ValueError, match=match):
        register(fixed, moving, **options)


# --------------------------------------------------------------------------------- exported module


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import itk_odereg
    from itk_odereg.msodenet.export import export_model

    path = tmp_path_factory.mktemp("export") / "m.pt"
    export_model("bspline", path)
    torch.ops.load_library(itk_odereg.ops.library_path())
    return torch.jit.load(str(path))


def test_exported_module_normalizes_and_is_frozen(exported):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 1, 24, 28, 24, generator=g), torch.rand(1, 1, 24, 28, 24, generator=g)
    u = exported(x, y)
    assert u.shape == (1, 3, 24, 28, 24) and not u.requires_grad
    assert all(not p.requires_grad for p in exported.parameters())
    assert (exported(1000 * x, 1000 * y) - u).abs().max() < 1e-4     # raw intensities: the same map


@pytest.mark.parametrize("case, match", [
    ("2d", r"'fixed' must be a \[1, 1, D, H, W\] tensor .* got shape \[1, 1, 28, 24\]"),
    ("no batch", r"'fixed' must be a \[1, 1, D, H, W\] tensor .* got shape \[1, 24, 28, 24\]"),
    ("batch 2", r"got shape \[2, 1, 24, 28, 24\]"),
    ("two channels", r"got shape \[1, 2, 24, 28, 24\]"),
    ("uint8", r"'fixed' must have floating voxels"),
    ("shapes", r"'fixed' \[1, 1, 24, 28, 24\] and 'moving' \[1, 1, 24, 28, 23\] must have the same shape"),
    ("nan", r"'fixed' has NaN or infinite voxels"),
    ("tiny", r"at least 8 voxels along every axis"),
])
def test_exported_module_refuses_bad_inputs_clearly(exported, case, match):
    x = torch.rand(1, 1, 24, 28, 24)
    y = torch.rand(1, 1, 24, 28, 24)
    if case == "2d":
        x, y = x[:, :, 0], y[:, :, 0]
    elif case == "no batch":
        x, y = x[0], y[0]
    elif case == "batch 2":
        x, y = torch.cat([x, x]), torch.cat([y, y])
    elif case == "two channels":
        x = torch.cat([x, x], 1)
    elif case == "uint8":
        x = (x * 255).to(torch.uint8)
    elif case == "shapes":
        y = y[..., :-1]
    elif case == "nan":
        x[0, 0, 3, 3, 3] = float("nan")
    elif case == "tiny":
        x, y = x[:, :, :4], y[:, :, :4]
    with pytest.raises(Exception, match=match):
        exported(x, y)
    # float64 is accepted (cast to float32)
    assert exported(torch.rand(1, 1, 24, 28, 24, dtype=torch.float64),
                    torch.rand(1, 1, 24, 28, 24, dtype=torch.float64)).dtype == torch.float32


@pytest.fixture(scope="module")
def exported_program(tmp_path_factory, exported):   # after `exported`: the ops' library is loaded
    from itk_odereg.msodenet.export import export_model

    path = tmp_path_factory.mktemp("export") / "m.pt2"
    export_model("bspline", path, shape=(24, 28, 24))
    return torch.export.load(str(path)).module()


def test_exported_program_normalizes_like_the_module_and_refuses_nan(exported, exported_program):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 1, 24, 28, 24, generator=g), torch.rand(1, 1, 24, 28, 24, generator=g)
    u = exported_program(1000 * x, 1000 * y)           # raw intensities: normalized inside
    assert (u - exported(x, y)).abs().max() < 1e-4 and not u.requires_grad
    y[0, 0, 3, 3, 3] = float("inf")
    with pytest.raises(RuntimeError, match="'moving' has NaN or infinite voxels"):
        exported_program(x, y)
    with pytest.raises(Exception, match=r"size\(\)\[4\] == 24"):   # the program's own shape guard
        exported_program(x[..., :-1], y[..., :-1])


@pytest.mark.parametrize("shape", [(0, 0, 0), (4, 40, 40), (24, 28)])
def test_export_refuses_a_program_shape_the_model_cannot_take(tmp_path, shape):
    from itk_odereg.msodenet.export import export_model

    with pytest.raises(ValueError, match="'shape' must be three sizes .* at least 8 voxels"):
        export_model("bspline", tmp_path / "m.pt2", shape=shape)
    assert not (tmp_path / "m.pt2").exists()


def test_reproducible_mode_gives_the_same_answer_at_any_thread_count():
    from itk_odereg import ODERegistrationMethod, register

    fixed, moving = oblique_pair()
    previous = torch.get_num_threads()
    fields = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            fields[threads] = register(fixed, moving, iterations=(20, 10, 5), reproducible=True).deformable_field_mm
            assert torch.get_num_threads() == threads        # the caller's setting is restored
    finally:
        torch.set_num_threads(previous)
    assert np.array_equal(fields[1], fields[2])
    method = ODERegistrationMethod()
    assert method.GetReproducible() is False
    method.ReproducibleOn()
    assert method.GetReproducible() is True
