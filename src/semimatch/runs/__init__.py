"""A run's life: the engine's loop, the run folder (start, resume, state, checkpoints, records)
and what decides a run before it starts (resolve, hardware, validation)."""
