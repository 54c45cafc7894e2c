"""kneepain: which knee hurts, and what in the MRI explains it.

A reproduction, as a tool, of "Pairwise learning of MRI scans using a convolutional Siamese
network for prediction of knee pain" (Chang et al.), extended with automatic preprocessing,
measured localization and a radiologist's review app.
"""

__version__ = "0.1.0"
