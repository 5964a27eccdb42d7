"""TensorRT's build progress as log lines, and the hook that cancels a build (``IProgressMonitor``).

TensorRT reports nested phases ("Building engine" > "Building engine from subgraph" > "Optimizing graph" ...)
and steps within them. At level INFO one line is logged per phase of the top ``MAX_DEPTH`` levels when it
starts, and at most one step line per ``STEP_INTERVAL`` seconds; deeper phases and every step go to DEBUG.
``--log_level warning`` silences it. Returning False from ``step_complete`` makes TensorRT stop the build.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("ckpt_build")

MAX_DEPTH = 4  # "Building engine" > "... from subgraph" > "Computing profile costs" > "Timing tactics"
STEP_INTERVAL = 2.0  # seconds between two step lines at INFO


def make_progress_monitor(trt, label: str, cancelled: Callable[[], bool] = lambda: False):
    """A ``trt.IProgressMonitor`` logging ``label: phase > phase, step i/n (t s)``; cancels once ``cancelled()``."""

    class ProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.start = time.perf_counter()
            self.phases: dict[str, tuple[str, int]] = {}  # name -> (path from the top, number of steps)
            self.last_line = self.start  # the first step line comes STEP_INTERVAL into the build

        def _line(self, level: int, path: str, step: str = "") -> None:
            log.log(level, "%s: %s%s (%.1f s)", label, path, step, time.perf_counter() - self.start)

        def phase_start(self, phase_name, parent_phase, num_steps):
            parent = self.phases.get(parent_phase, ("", 0))[0] if parent_phase else ""
            path = f"{parent} > {phase_name}" if parent else phase_name
            self.phases[phase_name] = (path, num_steps)
            level = logging.INFO if path.count(" > ") < MAX_DEPTH and not cancelled() else logging.DEBUG
            self._line(level, path)

        def step_complete(self, phase_name, step):
            if cancelled():  # quietly: the tool may already have said "interrupted"
                log.debug("%s: build cancelled at %s, step %d", label, phase_name, step + 1)
                return False
            path, steps = self.phases.get(phase_name, (phase_name, 0))
            now = time.perf_counter()
            due = now - self.last_line >= STEP_INTERVAL and path.count(" > ") < MAX_DEPTH
            if due:
                self.last_line = now
            self._line(logging.INFO if due else logging.DEBUG, path, f", step {step + 1}/{steps}")
            return True

        def phase_finish(self, phase_name):
            self.phases.pop(phase_name, None)

    return ProgressMonitor()
