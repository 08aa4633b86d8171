"""Progress of a training run: one line per interval with the loss, the rates and the ETA."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclasses.dataclass
class ProgressLogger:
    """One line every `log_every` steps (and at the first and last step): loss, grad norm, learning rate,
    tokens/s and steps/s over the steps since the last line (compilation excluded), and the ETA."""

    total_steps: int
    tokens_per_step: int
    log_every: int
    emit: Callable[[str], None]
    prefix: str = ""  # e.g. "[coe] ": which stage of a staged run
    _window_start: float | None = None
    _window_steps: int = 0
    _rate: float = float("nan")

    def step_done(self, step: int, metrics: dict[str, float], now: float) -> None:
        """`step` counts from 1; `now` is taken after the step's result is ready."""
        if self._window_start is None:  # the first step carries the compilation; rates start after it
            self._window_start = now
        else:
            self._window_steps += 1
        last = step == self.total_steps
        if not (step == 1 or step % self.log_every == 0 or last):
            return
        if self._window_steps:
            self._rate = self._window_steps / max(now - self._window_start, 1e-9)
            self._window_start, self._window_steps = now, 0
        width = len(str(self.total_steps))
        head = (f"{self.prefix}step {step:>{width}}/{self.total_steps}  loss {metrics['loss']:.4f}  "
                f"grad_norm {metrics['grad_norm']:.3f}  lr {metrics['learning_rate']:.2e}  ")
        if not self._rate > 0:  # only the first step so far: its time is mostly compilation
            self.emit(head + f"first step {metrics.get('step_time', float('nan')):.1f} s (compiling)  ETA ?")
            return
        eta = (self.total_steps - step) / self._rate
        self.emit(head + f"tokens/s {self._rate * self.tokens_per_step:,.0f}  steps/s {self._rate:.2f}  "
                  f"ETA {format_duration(eta)}")


__all__ = ["ProgressLogger", "format_duration"]
