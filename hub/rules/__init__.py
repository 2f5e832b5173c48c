"""Business rules per resource type: pure functions over resource JSON, no I/O."""
