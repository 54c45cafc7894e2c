"""The README's "After the demo" commands run as written from a fresh shell after the README's set-up.

Each command runs from the project folder with an environment that has no virtual environment
activated (PATH of the system only), with ``--help`` appended: running them for real takes minutes,
but the shell, the program path and every option name are checked (an unknown option fails even
with ``--help``). The predict example script itself is run for real by tests/test_demo.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from kneepain.demo import PREDICT_EXAMPLE

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FRESH_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def after_the_demo() -> list[str]:
    """The command lines of the README's first code block under "## After the demo"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## After the demo", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"\n\n((?: {4}.*\n)+)", section)
    assert block, "no indented code block under ## After the demo"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_every_command_names_the_environment_it_runs_in() -> None:
    commands = [shlex.split(line, comments=True) for line in after_the_demo()]
    assert len(commands) >= 5
    for argv in commands:
        assert argv[0] in (".venv/bin/kneepain", ".venv/bin/python", "sh"), argv  # never a bare `kneepain`
    scripts = [argv[1] for argv in commands if argv[0] == "sh"]
    assert scripts == [f"demo-run/{PREDICT_EXAMPLE}"]  # what `make demo` (--out demo-run) writes
    assert "--out demo-run" in (ROOT / "Makefile").read_text()
    assert "DEMO/" not in README.read_text()


@pytest.mark.parametrize("line", [line for line in after_the_demo() if not line.startswith("sh ")])
def test_command_runs_from_a_fresh_shell(line: str, tmp_path: Path) -> None:
    argv = shlex.split(line, comments=True)
    if not (ROOT / argv[0]).exists():
        pytest.skip(f"{argv[0]} not found: the README's set-up (make) has not been run here")
    completed = subprocess.run(
        ["bash", "-c", shlex.join([*argv, "--help"])],
        cwd=ROOT,
        env={**FRESH_ENV, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "usage" in completed.stdout.lower()


def test_what_the_commands_write_is_ignored_by_git() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = ["demo-run/demo.json", "pred/prediction.json"]
    for argv in (shlex.split(line, comments=True) for line in after_the_demo()):
        outputs += [argv[i + 1] for i, word in enumerate(argv[:-1]) if word in ("--out", "--db")]
    completed = subprocess.run(
        ["git", "check-ignore", "--no-index", *outputs], cwd=ROOT, capture_output=True, text=True, check=False
    )
    ignored = set(completed.stdout.split())
    assert set(outputs) <= ignored, sorted(set(outputs) - ignored)
