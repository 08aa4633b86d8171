"""Session-wide test setup. Runs before any test module imports JAX.

8 fake CPU devices for the whole session (sharding tests build `data×fsdp×tensor` meshes on them); single-device
code is unaffected, since arrays default to device 0. The flag only works if set before JAX is first imported.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
