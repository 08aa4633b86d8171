"""What a user meets first: `merg-jax demo` (data, training, scores and answers in one command) and `merg-jax serve`
(a local web page). Both sit on top of every other layer: they only call data, train, eval and infer."""
