"""Progress of a registration: a tqdm bar per pyramid level on a terminal, one line per level in a log.

Every stage reports one record per iteration (``iteration``, ``iterations``, ``loss``, and
``level`` or ``level_spacing_mm``; ``converged`` when a level stopped early). On a
terminal each level gets a tqdm bar; when stderr is a file or a pipe (a cluster job's log)
each finished level writes one plain line instead of carriage-return frames.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional

__all__ = ["ProgressReporter"]


class ProgressReporter:
    """Routes stage records to a user callback, or draws them on ``stream`` (default stderr)."""

    def __init__(self, callback: Optional[Callable[[dict], None]] = None, stream: Any = None) -> None:
        self.callback = callback
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()
        self._bar = None
        self._key = None
        self._level_started = self.started

    @classmethod
    def create(cls, progress: bool | Callable[[dict], None]) -> Optional["ProgressReporter"]:
        """None for ``progress=False``; a callback reporter for a callable; a bar for True."""
        if not progress:
            return None
        return cls(progress if callable(progress) else None)

    def stage(self, name: str) -> Callable[[dict], None]:
        """The per-iteration callback of stage ``name`` (records may carry their own ``stage``)."""
        return lambda record: self.report(name, record)

    def _is_terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    @staticmethod
    def _level_label(record: dict) -> str:
        if "level" in record:
            return f"level {record['level'] + 1}"
        return "x".join(f"{h:.1f}" for h in record.get("level_spacing_mm", ())) + " mm"

    def report(self, stage: str, record: dict) -> None:
        label = record.get("stage", stage)
        if self.callback is not None:
            self.callback(dict(record, stage=label))
            return
        key = (label, record.get("level"), tuple(record.get("level_spacing_mm", ())))
        done, total = record["iteration"] + 1, record["iterations"]
        finished = done == total or bool(record.get("converged"))
        if key != self._key:
            self._close_bar()
            self._key = key
            self._level_started = time.perf_counter()
            if self._is_terminal():
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=f"{label:>7s} {self._level_label(record)}", file=self.stream,
                                 leave=True, dynamic_ncols=True, bar_format="{desc}: {bar} {n_fmt}/{total_fmt} "
                                 "[{elapsed}<{remaining}] {postfix}")
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            self._bar.set_postfix_str(f"loss {record['loss']:.4f}", refresh=False)
            if finished:
                if record.get("converged"):
                    self._bar.set_postfix_str(f"loss {record['loss']:.4f} (converged)", refresh=False)
                self._close_bar()
        elif finished:
            note = " (converged)" if record.get("converged") and done < total else ""
            self.stream.write(f"{label:>7s} {self._level_label(record)}: {done}/{total} iterations{note}, "
                              f"loss {record['loss']:.4f}, {time.perf_counter() - self._level_started:.1f} s "
                              f"(total {time.perf_counter() - self.started:.1f} s)\n")
            self.stream.flush()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._close_bar()
