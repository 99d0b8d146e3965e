"""Stability engine: the hardware probe and the thresholds it turns into."""
