"""merg_jax: multimodal empathetic response generation (the AvaMERG "Empatheia" model) in JAX/Flax NNX.

See README.md for the two commands (main job, tests) and ../shared/DESIGN.md for the architecture.
"""

__version__ = "0.1.0"


def respond(*args, **kwargs):
    """Answers one dialogue turn with a trained model: `merg_jax.infer.respond.respond` (imported on first use,
    so `import merg_jax` stays light)."""
    from merg_jax.infer.respond import respond as _respond

    return _respond(*args, **kwargs)
