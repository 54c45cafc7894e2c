"""`kneepain paper`: every experiment of the paper as ordinary run folders, and one document of its results.

The package only orchestrates and lays out: the runs are made by the CLI stages (cv, split, train,
evaluate, cam, review export), the numbers come from the files those stages write, and the
document puts each of them beside the value published on the OAI.
"""

from kneepain.paper.plan import PaperError, PaperOptions
from kneepain.paper.runner import run_paper

__all__ = ["PaperError", "PaperOptions", "run_paper"]
