"""Executors run the scheduler's groups: `local` in this process, `ray` as Ray actors, one per model."""
