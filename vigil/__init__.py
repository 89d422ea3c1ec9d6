"""Vigil's public Python API for applications: ``vigil.client``."""
