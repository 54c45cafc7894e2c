"""Shared test settings: small thread counts so parallel work on 2 cores stays predictable."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
