"""Circuits (work in progress)."""
