"""Evaluation of out-of-fold predictions: AUC with DeLong and bootstrap intervals, ROC figures,
the paper's subgroup table (Figure 4C), paired comparisons between runs and calibration.

Every number is computed from a run's ``predictions.csv`` and the work folder's cohort table
alone, so anyone holding those two files can recompute it.
"""
