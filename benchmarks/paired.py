"""Paired timing of NODEO against another checkout of itk-odereg, run by run on the same pairs.

This machine's speed drifts by 10-20 % within minutes, more than most single engine changes
move the time. So each pair is registered by this working tree and by a baseline checkout
(its ``itk_odereg`` package, built, put first on ``PYTHONPATH`` of its process) one right
after the other, alternating which goes first, and the report is the median over the runs
of each run's own ratio (this tree / baseline), next to the medians of the times. Every run
also hashes the returned displacement and its inverse: "identical" says whether the two
checkouts gave the same bits, which a change meant to be a pure speed-up should.

The timed call is ``nodeo_register`` on the pair's images (min-max scaled to [0, 1]) with the
default settings, LNCC for ``mono`` pairs and NGF for ``multi``, one process per run.

Example (pairs prepared by ``accuracy.py --work-dir /tmp/bench2``; a baseline built with
``git worktree add /tmp/base <commit> && cd /tmp/base && python setup.py build_ext --inplace``)::

    python benchmarks/paired.py --work-dir /tmp/bench2 --baseline /tmp/base --reps 4
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

_RUN = r"""
import hashlib, sys, time
import SimpleITK as sitk
import torch
from itk_odereg.registration.nodeo import NODEOSettings, nodeo_register

pair, metric, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)

def load(path):
    image = sitk.ReadImage(path, sitk.sitkFloat32)
    array = torch.from_numpy(sitk.GetArrayFromImage(image))[None, None]
    return (array - array.min()) / (array.max() - array.min()), image.GetSpacing()[::-1]

fixed, spacing = load(pair + "/fixed.nii")
moving, _ = load(pair + "/moving.nii")
t0, c0 = time.perf_counter(), time.process_time()
result = nodeo_register(fixed, moving, spacing, NODEOSettings(metric=metric))
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
digest = hashlib.sha1(result.displacement.numpy().tobytes() + result.inverse_displacement.numpy().tobytes())
print(f"{wall:.4f} {cpu:.4f} {digest.hexdigest()[:16]}")
"""


def _run(pair: Path, metric: str, threads: int, baseline: str | None) -> tuple[float, float, str]:
    env = dict(os.environ)
    if baseline is not None:
        env["PYTHONPATH"] = baseline + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    done = subprocess.run([sys.executable, "-c", _RUN, str(pair), metric, str(threads)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"paired.py: the run on {pair} ({'baseline' if baseline else 'this tree'}) failed:\n"
                         f"{done.stderr[-2000:]}")
    wall, cpu, digest = done.stdout.split()[-3:]
    return float(wall), float(cpu), digest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Reports, per task: the median over runs of (this tree / baseline) wall and "
                                            "CPU seconds, the median seconds of each, and whether the outputs were "
                                            "bit-identical in every run.")
    parser.add_argument("--work-dir", required=True, type=Path,
                        help="folder of prepared pairs (sNN_to_sMM_<task>_2mm/fixed.nii, moving.nii), as "
                             "accuracy.py --work-dir leaves it")
    parser.add_argument("--baseline", required=True,
                        help="root of the baseline checkout (the folder holding its built itk_odereg package)")
    parser.add_argument("--reps", type=int, default=4, help="runs of each pair by each checkout (default 4)")
    parser.add_argument("--pairs", type=int, default=2, help="pairs per task, the first in name order (default 2)")
    parser.add_argument("--contrast", default="mono,multi", help="comma list of mono, multi")
    parser.add_argument("--resolution", default="2mm", help="the pair folders' resolution suffix (default 2mm)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    baseline = str(Path(args.baseline).resolve())
    if not (Path(baseline) / "itk_odereg" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline!r} holds no itk_odereg package")
    metrics = {"mono": "lncc", "multi": "ngf"}
    tasks = [t.strip() for t in args.contrast.split(",") if t.strip()]
    if any(t not in metrics for t in tasks):
        parser.error(f"--contrast must list mono and/or multi, got {args.contrast!r}")
    pairs = []
    for task in tasks:
        found = sorted(p for p in args.work_dir.glob(f"s*_to_s*_{task}_{args.resolution}")
                       if (p / "fixed.nii").is_file() and (p / "moving.nii").is_file())[:args.pairs]
        if not found:
            parser.error(f"no prepared {task} pairs under {args.work_dir} (run accuracy.py --work-dir there first)")
        pairs += [(task, p) for p in found]

    runs: dict[str, list] = {task: [] for task in tasks}
    for rep in range(args.reps):
        for task, pair in pairs:
            order = ("tree", "baseline") if rep % 2 == 0 else ("baseline", "tree")
            times = {who: _run(pair, metrics[task], args.threads, baseline if who == "baseline" else None)
                     for who in order}
            runs[task].append(times)
            print(f"[{rep}] {pair.name}: this tree {times['tree'][0]:.2f} s, baseline {times['baseline'][0]:.2f} s",
                  flush=True)
    for task, times in runs.items():
        wall = statistics.median(t["tree"][0] / t["baseline"][0] for t in times)
        cpu = statistics.median(t["tree"][1] / t["baseline"][1] for t in times)
        same = all(t["tree"][2] == t["baseline"][2] for t in times)
        print(f"{task}: {len(times)} paired runs, this tree / baseline: wall {wall:.3f}, CPU {cpu:.3f} (medians of "
              f"per-run ratios); seconds {statistics.median(t['tree'][0] for t in times):.2f} against "
              f"{statistics.median(t['baseline'][0] for t in times):.2f}; outputs identical: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
