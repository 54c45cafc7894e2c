"""Synthetic OAI-format knee MRI cohort with known truth (`kneepain synth`)."""

from kneepain.synth.cohort import generate_cohort

__all__ = ["generate_cohort"]
