"""merg_jax: multimodal empathetic response generation (the AvaMERG "Empatheia" model) in JAX/Flax NNX.

See README.md for the two commands (main job, tests) and ../shared/DESIGN.md for the architecture.
"""

__version__ = "0.1.0"
