"""``itk-odereg train`` and ``itk-odereg export``."""
from __future__ import annotations

import argparse
import os
import sys

from ._common import CLIError, PROG, _with_flags


def _cmd_train(args: argparse.Namespace) -> int:
    from ..msodenet.train import TrainSettings, train

    if args.iterations < 1:
        raise CLIError(f"--iterations must be at least 1, got {args.iterations}")
    if args.resolution <= 0:
        raise CLIError(f"--resolution must be positive (mm), got {args.resolution}")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CLIError(f"the output directory does not exist: '{out_dir}'")
    settings = TrainSettings(parameterization=args.parameterization, resolution_mm=args.resolution,
                             iterations=args.iterations, learning_rate=args.learning_rate, metric=args.metric,
                             train_subjects=tuple(args.subjects), seed=args.seed, threads=args.threads,
                             device=args.device)
    try:
        train(args.label_maps, args.output, settings, resume=not args.restart,
              log=lambda line: sys.stderr.write(line + "\n"))
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..msodenet.export import export_model

    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CLIError(f"the output directory does not exist: '{out_dir}'")
    if not args.output.endswith((".pt", ".pt2")):
        raise CLIError(f"--output must end in .pt (TorchScript) or .pt2 (torch.export), got '{args.output}'")
    try:
        export_model(args.model, args.output, shape=args.shape)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(_with_flags(str(err), "export_model():", {"shape": "--shape"})) from None
    sys.stderr.write(f"{PROG} export: wrote {args.output}\n")
    return 0
