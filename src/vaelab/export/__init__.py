"""Exporting a run: CSV tables of reconstructions and codes."""
