"""imageio-ffmpeg, set up to start ffmpeg without running Python in the forked child.

    from merg_jax.data.ffmpeg import imageio_ffmpeg

imageio-ffmpeg starts ffmpeg with `preexec_fn=os.setpgrp` (so that Ctrl-C does not reach it). A `preexec_fn`
makes Python fork without vfork and run Python code in the child before exec: when another thread holds a lock
at that moment (a grain read thread started ffmpeg while the trainer and other read threads ran), the child
can block on it for ever, and the thread waiting for ffmpeg with it (seen in the test suite: a child stuck on a
futex, the trainer waiting on the data pipeline). imageio-ffmpeg's documented switch turns the `preexec_fn`
off; ffmpeg is then started by vfork + exec and runs no Python. Ctrl-C now reaches ffmpeg too, which stops with
the program. A value the user set is kept.
"""

from __future__ import annotations

import os

os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")

import imageio_ffmpeg

__all__ = ["imageio_ffmpeg"]
