"""Measurement: the memory model (predicted and measured), step timing and FLOPs, the lens (one batch through both
methods), intruder dimensions and spectra."""
