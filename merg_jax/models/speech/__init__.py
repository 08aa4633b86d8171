"""Speech synthesis models: the acoustic model and the vocoders (`hifigan.HifiGan`, ...)."""
