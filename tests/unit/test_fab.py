"""The Flower app bundle (FAB) ``flwr run .`` builds holds the app's code and nothing else.

Why: Flower hands the whole FAB to the ClientApp with every message a SuperNode runs (``PullTaskInput``)
and refuses a bundle over 10 MB. Without ``fab-include`` it took every ``.py``/``.md``/``.json`` of the
repository, results/ included: 5.4 MB, growing with each report. The apps import only ``common``,
``clients`` and ``server`` (test_layering.py holds that arrow), so those three are the bundle.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import FAB_MAX_SIZE

ROOT = Path(__file__).resolve().parents[2]
APP_PACKAGES = ("common", "clients", "server")


def _bundle() -> tuple[bytes, set[str]]:
    fab = build_fab_from_disk(ROOT)
    return fab, set(zipfile.ZipFile(io.BytesIO(fab)).namelist())


def test_fab_holds_every_module_of_the_app_packages_and_nothing_else() -> None:
    _, names = _bundle()
    code = {p.relative_to(ROOT).as_posix() for pkg in APP_PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    code = {name for name in code if "__pycache__" not in name}
    assert code <= names, f"missing from the FAB: {sorted(code - names)[:5]}"
    extra = {name for name in names - code if name not in {"pyproject.toml", ".info/CONTENT"}}
    assert extra == set(), f"not app code: {sorted(extra)[:5]}"


def test_fab_stays_far_below_flowers_limit() -> None:
    fab, _ = _bundle()
    assert len(fab) < FAB_MAX_SIZE / 5, f"FAB {len(fab):,} bytes (Flower refuses {FAB_MAX_SIZE:,})"
