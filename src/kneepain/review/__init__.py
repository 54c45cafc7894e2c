"""The radiologist's review app: case pages over a run's CAMs, reviews stored in SQLite, exports."""
