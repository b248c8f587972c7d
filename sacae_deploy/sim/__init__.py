"""The simulator layer: DeepMind Control environments and their rendering, numpy + dm_control, never torch."""
