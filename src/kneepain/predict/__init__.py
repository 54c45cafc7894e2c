"""Predict for one new person: which knee hurts, the class activation maps, where the hot spot lies.

``predict_person(left_dir, right_dir, bundle_dir, out_dir=None, *, precision="auto")`` is the
entry point of ``kneepain predict`` and of the latency benchmark; see docs/predict.md.
"""

from kneepain.predict.checks import PredictInputError
from kneepain.predict.run import PredictQCError, predict_person

__all__ = ["PredictInputError", "PredictQCError", "predict_person"]
