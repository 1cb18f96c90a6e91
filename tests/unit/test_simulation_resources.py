"""Ray resources of `crossfed simulate`: on a GPU machine the platforms' actors must ask for a GPU share."""

import pytest

from simulations.local.simulate import backend_config


@pytest.mark.parametrize(
    ("cpus", "gpus", "share"),
    [(2, 0, 0.0), (2, 1, 0.5), (4, 1, 0.25), (3, 1, 1 / 3), (1, 2, 1.0), (0, 1, 1.0)],
)
def test_actors_share_the_gpus_and_never_ask_for_none_when_there_are_some(cpus: int, gpus: int, share: float) -> None:
    backend = backend_config(cpus, gpus)
    assert backend["client_resources"] == {"num_cpus": 1, "num_gpus": pytest.approx(share)}
    assert backend["init_args"]["num_cpus"] == max(1, cpus) and backend["init_args"]["num_gpus"] == gpus
    # every actor fits at once: Ray would otherwise queue platforms behind each other
    actors = backend["init_args"]["num_cpus"]
    assert share == 0.0 or actors * share <= gpus + 1e-9
