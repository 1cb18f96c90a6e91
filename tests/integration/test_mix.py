"""`crossfed mix`: a platform mixes the federation's model with its own local one, the share picked on
its validation split, and gets a run folder every `use` command takes.

One tiny in-process federation of the synthetic shops and one run of `app` alone (the comparison's
transport: the same training as `crossfed simulate`, without Ray), a few seconds each.
"""

from pathlib import Path

import numpy as np
import pytest

from clients.mix import MIX_SHARES, MixError, mix_runs, mix_tensors, pick_share, read_end
from clients.private_state import PrivateStore, private_folder
from clients.recommender import Recommender
from clients.tasks import evaluate_state
from common.config import TINY_PRESET, AppConfig
from common.data import write_dataset
from common.synthetic import make_synthetic
from server.federation import run_federation
from simulations.compare.inprocess import InProcessTransport, setups_for

TINY = {**TINY_PRESET, "num-server-rounds": 2, "fed.patience": 0}
PLATFORM = "app"


def _run(cfg: AppConfig, platforms: list[str]) -> Path:
    run_federation(InProcessTransport(setups_for(cfg, platforms, "cpu")), cfg)
    return Path(cfg.out_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(federated run of the three shops, run of `app` alone, dataset folder)."""
    root = tmp_path_factory.mktemp("mix")
    data = root / "data"
    write_dataset(data, make_synthetic(seed=0).values())
    cfg = AppConfig().replace(**TINY, **{"data.dir": str(data)})
    fused = _run(cfg.replace(**{"out-dir": str(root / "fed")}), ["app", "social_shop", "web_shop"])
    local = _run(cfg.replace(**{"out-dir": str(root / "local")}), [PLATFORM])
    return fused, local, data


def _valid(run: Path) -> dict[str, float]:
    """`app`'s validation metrics of a run's best model, evaluated here from its files."""
    end = read_end(run, PLATFORM)
    store = PrivateStore(private_folder(str(run), PLATFORM))
    best = int(end.summary["best_round"])
    return evaluate_state(end.cfg, _setup(end.cfg), end.shared, best, store, ("valid",))


def _setup(cfg: AppConfig):  # noqa: ANN202
    from clients.platform import NodeSetup

    return NodeSetup(PLATFORM, cfg.data.dir, "cpu")


def test_mix_picks_the_share_that_validates_best_and_writes_a_run_the_recommender_uses(runs, tmp_path) -> None:
    # Prepare
    fused, local, _ = runs
    # Execute
    result = mix_runs(fused, local, PLATFORM, tmp_path / "mixed", device="cpu")
    # Assert: every share tried; the ends are the two runs themselves (share 1 = fused, 0 = local)
    assert sorted(result.valid) == list(MIX_SHARES) and result.metric == "valid.auc"
    assert result.share == pick_share(result.valid, "valid.auc")
    assert result.valid[result.share]["valid.auc"] == max(m["valid.auc"] for m in result.valid.values())
    assert result.valid[1.0]["valid.auc"] == pytest.approx(_valid(fused)["valid.auc"], abs=1e-9)
    assert result.valid[0.0]["valid.auc"] == pytest.approx(_valid(local)["valid.auc"], abs=1e-9)
    assert 0.0 < result.test["auc"] < 1.0
    # ... the folder holds exactly the mix of the two runs' tensors at that share
    written, a, b = read_end(result.out, PLATFORM), read_end(fused, PLATFORM), read_end(local, PLATFORM)
    for name, value in mix_tensors(a.shared, b.shared, result.share).items():
        np.testing.assert_allclose(written.shared[name], value, rtol=1e-6, atol=1e-7)
    for name, value in mix_tensors(a.private, b.private, result.share).items():
        np.testing.assert_allclose(written.private[name], value, rtol=1e-6, atol=1e-7)
    assert written.summary["mix"]["fused-share"] == result.share
    # ... and the recommender serves from it
    rec = Recommender.from_run(result.out, PLATFORM, device="cpu")
    user = sorted(rec.histories)[0]
    assert len(rec.top_k(user, k=3)) == 3


def test_mix_tensors_and_pick_share_are_exact() -> None:
    fused = {"w": np.array([1.0, 3.0]), "b": np.array([[2.0]])}
    own = {"w": np.array([3.0, 1.0]), "b": np.array([[0.0]])}
    mixed = mix_tensors(fused, own, 0.25)
    np.testing.assert_allclose(mixed["w"], [2.5, 1.5])
    np.testing.assert_allclose(mixed["b"], [[0.5]])
    # ties go to more of the fused model; log-loss is minimised; a NaN share is never picked
    valid = {0.0: {"valid.auc": 0.7, "valid.logloss": 0.5}, 0.5: {"valid.auc": 0.7, "valid.logloss": 0.6},
             1.0: {"valid.auc": float("nan"), "valid.logloss": 0.4}}  # fmt: skip
    assert pick_share(valid, "valid.auc") == 0.5
    assert pick_share(valid, "valid.logloss") == 1.0
    with pytest.raises(MixError, match="different tensors"):
        mix_tensors(fused, {"w": own["w"]}, 0.5)
    with pytest.raises(MixError, match=r"tensor `w` has shape \(2,\)"):
        mix_tensors(fused, {**own, "w": np.zeros(3)}, 0.5)


def test_mix_refuses_other_models_other_rows_and_a_used_folder(runs, tmp_path, capsys) -> None:
    from simulations.cli import main

    fused, local, data = runs
    # another model (a wider tower) cannot be mixed in, whatever its tensors' names
    other = _run(AppConfig().replace(**{**TINY, "data.dir": str(data), "model.dim": 8, "num-server-rounds": 1,
                                                "out-dir": str(tmp_path / "dim8")}), [PLATFORM])  # fmt: skip
    with pytest.raises(MixError, match="`model.dim` is 64 .* and 8 in"):
        mix_runs(fused, other, PLATFORM, tmp_path / "a", device="cpu")
    # a local run of other users (another split seed) cannot be matched row by row
    reseeded = _run(AppConfig().replace(**{**TINY, "data.dir": str(data), "data.max-users": 20, "num-server-rounds": 1,
                                                   "out-dir": str(tmp_path / "fewer")}), [PLATFORM])  # fmt: skip
    with pytest.raises(MixError, match="cover different users"):
        mix_runs(fused, reseeded, PLATFORM, tmp_path / "b", device="cpu")
    # a folder with something in it is not overwritten
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(MixError, match="not empty"):
        mix_runs(fused, local, PLATFORM, tmp_path / "used", device="cpu")
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
    # the CLI says it in one line, exit 2, before loading a model for a run that is not finished
    capsys.readouterr()
    code = main(["mix", "--federated", str(fused), "--local", str(tmp_path / "nowhere"), "--platform", PLATFORM,
                 "--out", str(tmp_path / "c")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "not a finished run" in err and "Traceback" not in err
