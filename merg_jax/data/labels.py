"""The label sets, re-exported for the data modules; they live in the leaf module `merg_jax.labels`, which models
and data both import."""

from merg_jax.labels import *  # noqa: F403
from merg_jax.labels import __all__  # noqa: F401
