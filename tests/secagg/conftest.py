"""Fixtures for the secure-aggregation tests."""

from __future__ import annotations

import pytest

from common.secagg import Manifest, SecAggConfig
from tests.secagg.helpers import tiny_manifest


@pytest.fixture
def cfg() -> SecAggConfig:
    return SecAggConfig(min_cohort=3, max_cohort=64)


@pytest.fixture
def manifest() -> Manifest:
    return tiny_manifest()
