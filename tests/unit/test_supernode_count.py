"""`flwr run .` without num-supernodes simulates 2 SuperNodes: the server says which platforms miss out."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flwr.superlink.grid import InMemoryGrid

from common.config import AppConfig
from common.data import write_dataset
from common.synthetic import make_synthetic
from server.grid_transport import warn_if_platforms_left_out


class _Nodes(InMemoryGrid):
    """A simulation grid whose online SuperNodes are given (the rest of the grid is not used)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.count + 1))


@pytest.mark.parametrize(("nodes", "left_out"), [(1, "social_shop, web_shop"), (2, "web_shop"), (3, None), (4, None)])
def test_warns_when_fewer_supernodes_than_embedded_platforms(
    nodes: int, left_out: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    # Execute
    with caplog.at_level(logging.WARNING, logger="crossfed.server"):
        message = warn_if_platforms_left_out(_Nodes(nodes), AppConfig())
    # Assert: one line naming the platforms that will not train and the flag that fixes it
    if left_out is None:
        assert message is None and not caplog.records
        return
    assert message == (
        f"only {nodes} SuperNodes for 3 platforms: {left_out} will not train "
        '(flwr run . --federation-config "num-supernodes=3")'
    )
    assert [r.getMessage() for r in caplog.records] == [message]


def test_counts_the_platforms_of_data_dir(tmp_path: Path) -> None:
    # Prepare: a dataset of two platforms
    shops = make_synthetic(seed=0)
    write_dataset(tmp_path, [shops["app"], shops["web_shop"]])
    cfg = AppConfig().replace(**{"data.dir": str(tmp_path)})
    # Execute / Assert
    assert warn_if_platforms_left_out(_Nodes(2), cfg) is None
    assert "web_shop will not train" in (warn_if_platforms_left_out(_Nodes(1), cfg) or "")


def test_deployment_grid_is_not_checked() -> None:
    class _Deployed:  # any Grid that is not the simulation's
        def get_node_ids(self) -> list[int]:
            return [1]

    assert warn_if_platforms_left_out(_Deployed(), AppConfig()) is None  # type: ignore[arg-type]
