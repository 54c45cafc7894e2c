"""`kneepain bench`: side-by-side speed figures measured in one run (ratios, not absolute times)."""
