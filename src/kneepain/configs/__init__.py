"""Preset configurations of a training run as TOML files (kneepain.config reads them)."""
