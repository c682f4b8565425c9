"""``itk-odereg`` command line: in-process ``main([...])`` and once as ``python -m itk_odereg``.

Outputs are checked with SimpleITK and antspyx reading the written files; bad
inputs must give exit status 1 and one line ``itk-odereg: error: ...``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from itk_odereg.cli import main, register_outputs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--iterations", "10", "5", "--resolution", "0"]


from synthetic_images import (  # noqa: E402
    assert_same_image,
    inner_mask,
    one_thread,  # noqa: F401  (autouse)
    write_oblique_pair,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return dict(write_oblique_pair(d), dir=d)


@pytest.fixture(scope="module")
def registered(data):
    """One in-process run with the default affine pre-alignment and --qc."""
    prefix = str(data["dir"] / "out" / "sub01_")
    os.makedirs(os.path.dirname(prefix))
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["register", "-f", data["fixed"], "-m", data["moving"], "-o", prefix, "--qc", *FAST])
    return {"code": code, "prefix": prefix, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "outputs": register_outputs(prefix, qc=True)}




def _arr(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


# ---------------------------------------------------------------------------- register


def test_register_writes_every_output(registered):
    assert registered["code"] == 0, registered["stderr"]
    for role, path in registered["outputs"].items():
        assert os.path.isfile(path), role
    names = sorted(os.listdir(os.path.dirname(registered["prefix"])))
    assert names == sorted(os.path.basename(p) for p in registered["outputs"].values())  # no temporary files left
    with open(registered["outputs"]["qc"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    warp = sitk.ReadImage(registered["outputs"]["warp"])
    assert warp.GetNumberOfComponentsPerPixel() == 3


def test_register_reports_progress_and_timings(registered):
    # stderr is a pipe here, not a terminal: one plain line per finished level, no carriage-return frames
    err = registered["stderr"]
    assert "nodeo level 1: " in err and "nodeo level 2: " in err and " iterations" in err and "\r" not in err
    out = registered["stdout"]
    assert "stage timings (s):" in out and "affine" in out and "nodeo" in out and "write" in out
    assert registered["outputs"]["warped"] in out


def test_warped_is_reproduced_by_the_composite_file(data, registered):
    fixed, moving = sitk.ReadImage(data["fixed"]), sitk.ReadImage(data["moving"])
    composite = sitk.ReadTransform(registered["outputs"]["composite"])
    expected = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, composite, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    assert_same_image(_arr(registered["outputs"]["warped"]), expected, inner_mask(moving, fixed, composite))


def test_inverse_warped_is_reproduced_by_the_inverse_composite(data, registered):
    fixed, moving = sitk.ReadImage(data["fixed"]), sitk.ReadImage(data["moving"])
    inverse = sitk.ReadTransform(registered["outputs"]["inverse_composite"])
    expected = sitk.GetArrayFromImage(sitk.Resample(fixed, moving, inverse, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    assert_same_image(_arr(registered["outputs"]["inverse_warped"]), expected, inner_mask(fixed, moving, inverse))


def test_apply_in_ants_order_matches_ants_and_warped(data, registered, tmp_path):
    o = registered["outputs"]
    out = str(tmp_path / "applied.nii.gz")
    assert main(["apply", "-i", data["moving"], "-r", data["fixed"], "-t", o["warp"], o["affine"], "-o", out]) == 0
    applied = _arr(out)
    fixed, moving = sitk.ReadImage(data["fixed"]), sitk.ReadImage(data["moving"])
    composite = sitk.ReadTransform(o["composite"])
    assert_same_image(_arr(o["warped"]), applied, inner_mask(moving, fixed, composite))
    ants = pytest.importorskip("ants")
    expected = ants.apply_transforms(ants.image_read(data["fixed"]), ants.image_read(data["moving"]),
                                     [o["warp"], o["affine"]])
    np.testing.assert_allclose(applied, expected.numpy().T, atol=1e-3 * float(np.abs(applied).max()))


def test_apply_inverse_with_invert_flags_and_ants_syntax(data, registered, tmp_path):
    o = registered["outputs"]
    out1, out2 = str(tmp_path / "inv1.nii.gz"), str(tmp_path / "inv2.nii.gz")
    assert main(["apply", "-i", data["fixed"], "-r", data["moving"], "-t", o["affine"], o["inverse_warp"],
                 "--invert", "1", "0", "-o", out1]) == 0
    assert main(["apply", "-i", data["fixed"], "-r", data["moving"], "-t", f"[{o['affine']},1]",
                 "-t", o["inverse_warp"], "-o", out2]) == 0
    np.testing.assert_array_equal(_arr(out1), _arr(out2))
    fixed, moving = sitk.ReadImage(data["fixed"]), sitk.ReadImage(data["moving"])
    inverse = sitk.ReadTransform(o["inverse_composite"])
    assert_same_image(_arr(out1), _arr(o["inverse_warped"]), inner_mask(fixed, moving, inverse))


def test_apply_nearest_keeps_label_pixel_type(data, registered, tmp_path):
    labels = sitk.Cast(sitk.ReadImage(data["moving"]) > 50, sitk.sitkUInt8)
    labels_path, out = str(tmp_path / "labels.nii.gz"), str(tmp_path / "labels_warped.nii.gz")
    sitk.WriteImage(labels, labels_path)
    o = registered["outputs"]
    assert main(["apply", "-i", labels_path, "-r", data["fixed"], "-t", o["composite"], "-o", out,
                 "--interpolation", "nearest"]) == 0
    result = sitk.ReadImage(out)
    assert result.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(result))) <= {0, 1}


def test_register_as_a_subprocess(data, tmp_path):
    prefix = str(tmp_path / "sub_")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "itk_odereg", "register", "-f", data["fixed"], "-m", data["moving"], "-o", prefix,
         "--affine", "none", "--iterations", "5", "--resolution", "0", "--quiet"],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""  # --quiet
    for path in register_outputs(prefix).values():
        assert os.path.isfile(path)
    affine = sitk.ReadTransform(prefix + "0GenericAffine.mat")
    np.testing.assert_allclose(affine.GetParameters(), [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0], atol=1e-12)


# ---------------------------------------------------------------------------- help and usage


def test_help_teaches_conventions(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for word in ("LPS", "antsApplyTransforms", "examples:", "itk-odereg register -f", "0GenericAffine.mat"):
        assert word in text
    assert main(["register", "--help"]) == 0
    text = capsys.readouterr().out
    for word in ("Warped.nii.gz", "1InverseWarp.nii.gz", "Composite.h5", "--metric", "--resolution", "LPS"):
        assert word in text
    assert main(["apply", "--help"]) == 0
    assert "--invert" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [[], ["register", "-m", "x.nii.gz", "-o", "p_"], ["register", "-f", "a", "-m", "b", "-o", "p", "--metric", "cc"],
     ["apply", "-i", "a", "-r", "b", "-o", "c"], ["frobnicate"]],
    ids=["no-command", "missing-fixed", "bad-metric", "missing-transform", "unknown-command"],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


# ---------------------------------------------------------------------------- bad inputs


def _error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("itk-odereg: error: ")
    return lines[0]


def test_missing_input_file(data, capsys, tmp_path):
    code = main(["register", "-f", data["fixed"], "-m", str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "x_")])
    assert code == 1
    assert "moving image (-m) file not found" in _error_line(capsys)


def test_4d_image(data, capsys, tmp_path):
    moving = sitk.ReadImage(data["moving"])
    path = str(tmp_path / "series.nii.gz")
    sitk.WriteImage(sitk.JoinSeries([moving, moving]), path)
    assert main(["register", "-f", data["fixed"], "-m", path, "-o", str(tmp_path / "x_"), *FAST]) == 1
    line = _error_line(capsys)
    assert "moving image (-m) is a 4D image" in line


def test_vector_image(data, capsys, tmp_path):
    fixed = sitk.ReadImage(data["fixed"])
    path = str(tmp_path / "rgb.nii.gz")
    sitk.WriteImage(sitk.Compose(fixed, fixed, fixed), path)
    assert main(["register", "-f", path, "-m", data["moving"], "-o", str(tmp_path / "x_"), *FAST]) == 1
    assert "fixed image (-f) has 3 components per voxel" in _error_line(capsys)


def test_output_prefix_that_would_overwrite_an_input(data, capsys, tmp_path):
    prefix = str(tmp_path / "sub01_")
    moving = prefix + "Warped.nii.gz"  # the input is named like one of the outputs
    shutil.copy(data["moving"], moving)
    before = open(moving, "rb").read()
    assert main(["register", "-f", data["fixed"], "-m", moving, "-o", prefix, *FAST]) == 1
    line = _error_line(capsys)
    assert "refusing to overwrite input file" in line and moving in line
    assert open(moving, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["sub01_Warped.nii.gz"]


def test_missing_output_directory(data, capsys, tmp_path):
    assert main(["register", "-f", data["fixed"], "-m", data["moving"], "-o", str(tmp_path / "no" / "such" / "p_")]) == 1
    assert "output directory does not exist" in _error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(data, capsys, tmp_path):
    assert main(["register", "-f", data["fixed"], "-m", data["moving"], "-o", str(tmp_path / "x_"), "--device", "cuda"]) == 1
    assert "cuda" in _error_line(capsys).lower()


def test_apply_bad_transforms(data, registered, capsys, tmp_path):
    o = registered["outputs"]
    out = str(tmp_path / "o.nii.gz")
    garbage = tmp_path / "garbage.mat"
    garbage.write_text("not a transform\n")
    assert main(["apply", "-i", data["moving"], "-r", data["fixed"], "-t", str(garbage), "-o", out]) == 1
    assert "could not read transform" in _error_line(capsys)
    assert main(["apply", "-i", data["moving"], "-r", data["fixed"], "-t", o["warp"], "--invert", "1", "-o", out]) == 1
    assert "cannot invert the displacement field" in _error_line(capsys)
    assert main(["apply", "-i", data["moving"], "-r", data["fixed"], "-t", o["warp"], o["affine"], "--invert", "1",
                 "-o", out]) == 1
    assert "--invert takes one 0/1 per transform" in _error_line(capsys)
    assert main(["apply", "-i", data["moving"], "-r", data["fixed"], "-t", o["affine"], "-o", data["moving"]]) == 1
    assert "refusing to overwrite input file" in _error_line(capsys)
    assert not os.path.exists(out)


def test_debug_shows_the_traceback(data, tmp_path):
    with pytest.raises(Exception, match="file not found"):
        main(["register", "-f", data["fixed"], "-m", str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "x_"), "--debug"])
    with pytest.raises(Exception, match="file not found"):
        main(["--debug", "register", "-f", data["fixed"], "-m", str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "x_")])


# ---------------------------------------------------------------------------- start-up, threads, writing


def _python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_parser_and_help_do_not_import_torch():
    code = ("import sys; from itk_odereg.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules, 'SimpleITK' in sys.modules, 'numpy' in sys.modules)")
    assert _python(code) == "False False False"
    code = ("import sys, contextlib, io; from itk_odereg.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['--help']) == 0 and main(['register', '--help']) == 0\n"
            "print('torch' in sys.modules)")
    assert _python(code) == "False"


def test_package_names_are_imported_on_first_use():
    code = ("import sys, itk_odereg; before = 'torch' in sys.modules\n"
            "from itk_odereg import register, RegistrationResult, ops, ants_registration, ODERegistrationFilter\n"
            "import itk_odereg.registration.driver as d\n"
            "print(before, itk_odereg.register is d.register is register, callable(ops.warp), "
            "sorted(set(itk_odereg.__all__) - set(dir(itk_odereg))))")
    assert _python(code) == "False True True []"
    with pytest.raises(AttributeError, match="no attribute 'frobnicate'"):
        import itk_odereg

        itk_odereg.frobnicate  # noqa: B018


def test_register_threads_and_reads_each_input_once(data, tmp_path, monkeypatch):
    calls = {"torch": [], "itk": [], "read": []}
    set_torch, set_itk = torch.set_num_threads, sitk.ProcessObject.SetGlobalDefaultNumberOfThreads
    read = sitk.ReadImage
    itk_before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls["torch"].append(n), set_torch(n)))
    monkeypatch.setattr(sitk.ProcessObject, "SetGlobalDefaultNumberOfThreads",
                        staticmethod(lambda n: (calls["itk"].append(n), set_itk(n))))
    monkeypatch.setattr(sitk, "ReadImage", lambda *a, **k: (calls["read"].append(a[0]), read(*a, **k))[1])
    prefix = str(tmp_path / "t_")
    try:
        code = main(["register", "-f", data["fixed"], "-m", data["moving"], "-o", prefix, "--affine", "none",
                     "--iterations", "3", "--resolution", "0", "--quiet", "--threads", "1"])
    finally:
        set_itk(itk_before)
    assert code == 0
    assert calls["torch"] == [1] and calls["itk"] == [1]
    assert sorted(calls["read"]) == sorted([data["fixed"], data["moving"]])  # no second read for the outputs
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in register_outputs(prefix).values())


def test_register_threads_must_be_positive(data, capsys, tmp_path):
    assert main(["register", "-f", data["fixed"], "-m", data["moving"], "-o", str(tmp_path / "x_"),
                 "--threads", "0"]) == 1
    assert "--threads must be at least 1" in _error_line(capsys)
    assert os.listdir(tmp_path) == []


def test_write_image_fast_gzip_is_the_itk_nifti_atomically(tmp_path):
    import gzip

    from itk_odereg.io_utils import write_image

    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.standard_normal((6, 7, 8, 3)), isVector=True)
    image.SetSpacing((1.5, 2.0, 2.5))
    image.SetOrigin((3.0, -4.0, 5.0))
    path, raw = str(tmp_path / "field.nii.gz"), str(tmp_path / "ref" / "field.nii")
    os.makedirs(os.path.dirname(raw))
    assert write_image(image, path) == path
    sitk.WriteImage(image, raw)
    with open(path, "rb") as f, open(raw, "rb") as g:
        assert gzip.decompress(f.read()) == g.read()  # the same NIfTI bytes ITK writes
    back = sitk.ReadImage(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert back.GetSpacing() == image.GetSpacing() and back.GetOrigin() == image.GetOrigin()
    first = open(path, "rb").read()
    write_image(image, path)
    assert open(path, "rb").read() == first  # deterministic bytes (no name, no time stamp in the gzip header)
    assert sorted(os.listdir(tmp_path)) == ["field.nii.gz", "ref"]  # no temporary files left
    with pytest.raises(ValueError, match="refusing to overwrite input file"):
        write_image(image, raw, inputs=[raw])
    write_image(image, str(tmp_path / "field.mha"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "field.mha"))),
                                  sitk.GetArrayFromImage(image))


def test_cli_choices_follow_the_registries():
    # The parser spells the registries' names out so that --help needs no torch; they must not drift.
    import itk_odereg.cli as cli
    from itk_odereg.losses import METRICS
    from itk_odereg.registration.stages import AFFINE_MODES, DEFORMABLE_STAGES

    assert cli.METHOD_CHOICES == DEFORMABLE_STAGES
    assert cli.METRIC_CHOICES == tuple(METRICS)
    assert cli.AFFINE_CHOICES == tuple("none" if mode is None else mode for mode in AFFINE_MODES)
