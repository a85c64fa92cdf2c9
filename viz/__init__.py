"""Figures of masks, energies and curves (matplotlib). Draws, never trains."""
