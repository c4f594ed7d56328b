"""Data sets beyond CamVid (integrator fills this in)."""
