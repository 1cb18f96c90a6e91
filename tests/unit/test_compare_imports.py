"""The comparison runs where Flower and cryptography are not installed (a bare GPU box): importing
the harness, or running ``crossfed prepare``/``compare`` through the CLI, must not load them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("flwr", "cryptography", "deploy")
CLI_HELP = "from simulations.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
PROBE = """
import sys
{code}
print("loaded:", " ".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))))
"""


def _loaded(code: str) -> str:
    """Top-level packages of HEAVY that ``code`` imports, run in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)], capture_output=True,
                          text=True, check=True, timeout=120)  # fmt: skip
    return done.stdout.rsplit("loaded:", 1)[1].strip()  # after any --help text


def test_compare_and_prepare_do_not_import_flower_or_cryptography() -> None:
    # one interpreter (torch loads once): the harness modules, then the CLI's prepare and compare parsers
    code = "\n".join(["import simulations.compare.runner, simulations.compare.jobs, simulations.compare.report",
                      CLI_HELP.format(argv=["prepare", "movielens", "--help"]),
                      CLI_HELP.format(argv=["compare", "--help"])])  # fmt: skip
    assert _loaded(code) == ""
