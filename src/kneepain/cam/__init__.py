"""Class activation maps of a trained run: compute, draw, and measure how well they localize lesions."""
