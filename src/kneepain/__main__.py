"""Allow ``python -m kneepain``."""

from kneepain.cli import app

app(prog_name="kneepain")
