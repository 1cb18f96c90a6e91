"""Use a finished run: recommend, score, export, serve over real HTTP, keep training on appended data.

One real Flower simulation (Ray, three platforms, tiny model) per module; every command runs on it.
"""

import csv
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from clients.recommender import CACHE_DIR, Recommender, RecommendError
from clients.trainer import EncodedSplit, predict
from common.config import TINY_PRESET, AppConfig
from common.data import write_dataset
from common.files import result_dir_mode, result_mode
from common.run_files import ROUNDS_FILE, SUMMARY_FILE
from common.synthetic import make_synthetic
from simulations.local.simulate import run_simulated_federation, validate_inputs

TINY = {**TINY_PRESET, "num-server-rounds": 2, "fed.patience": 0}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}  # fmt: skip


def _crossfed(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, dataset folder) of a finished 2-round tiny federation on the synthetic shops."""
    root = tmp_path_factory.mktemp("use")
    data = root / "data"
    write_dataset(data, make_synthetic(seed=0).values())
    cfg = AppConfig().replace(**TINY, **{"data.dir": str(data), "out-dir": str(root / "run")})
    run_simulated_federation(cfg, validate_inputs(cfg), num_cpus=2)
    return root / "run", data


@pytest.fixture(scope="module")
def rec(run: tuple[Path, Path]) -> Recommender:
    return Recommender.from_run(run[0], "app", device="cpu")


def test_scores_are_the_trainers_predictions(rec: Recommender) -> None:
    # Prepare: every catalogue item as a candidate for one user, rows as the trainer encodes them
    user = sorted(rec.histories)[3]
    history = rec.histories[user]
    table = rec.part.table
    n = len(table)
    liked = np.tile(np.r_[table.rows(history.liked), -1], (n, 1))
    disliked = np.tile(np.r_[table.rows(history.disliked), -1], (n, 1))
    data = EncodedSplit(np.full(n, rec.users[user]), np.arange(n), liked, disliked, np.zeros(n, np.float32),
                        stats=rec.item_stats.cpu().numpy())  # fmt: skip
    # Execute
    vectors = rec.item_vectors()
    expected = {s: predict(rec.scorer, rec.part, data, 64, rec.device, vectors, s) for s in ("like", "rank")}
    got = {s: rec.score(user, table.ids, output=s) for s in ("like", "rank")}
    # Assert: the serving path (one user vector, batched head) is the evaluation path, for both scores
    for s in ("like", "rank"):
        np.testing.assert_allclose(got[s], expected[s], rtol=1e-5, atol=1e-6)


def test_top_k_is_the_best_unseen_items_best_first(rec: Recommender) -> None:
    # Prepare
    user = sorted(rec.histories)[0]
    seen = rec.histories[user].seen
    scores = dict(zip(rec.part.table.ids, rec.score(user, rec.part.table.ids, output="rank"), strict=True))
    # Execute
    top = rec.top_k(user, k=5)
    # Assert
    brute = sorted((i for i in scores if i not in seen), key=lambda i: -scores[i])[:5]
    assert [s.item_id for s in top] == brute
    assert [s.score for s in top] == pytest.approx([scores[i] for i in brute], rel=1e-5)
    assert not seen & {s.item_id for s in top}
    with_seen = rec.top_k(user, k=len(rec.part.table), exclude_seen=False)
    assert len(with_seen) == len(rec.part.table)


def test_unknown_user_item_and_cold_start(rec: Recommender) -> None:
    with pytest.raises(RecommendError, match="unknown user 'nobody'"):
        rec.top_k("nobody")
    with pytest.raises(RecommendError, match=r"unknown item ids \['NOPE'\]"):
        rec.score(sorted(rec.histories)[0], ["NOPE"])
    cold = rec.top_k("nobody", k=3, cold_start=True)
    assert len(cold) == 3 and all(0.0 < s.score < 1.0 for s in cold)


def test_item_vectors_are_cached_on_disk_and_reused(run: tuple[Path, Path], rec: Recommender) -> None:
    # Prepare: the fixture's recommender computed and saved them
    rec.item_vectors()
    files = list((run[0] / CACHE_DIR / "app").glob("*.npy"))
    assert len(files) == 1
    # Execute: a new recommender of the same run reads them instead of encoding
    again = Recommender.from_run(run[0], "app", device="cpu")
    again.part.table.tokens[:] = again.part.table.pad_id  # encoding these would give other vectors
    # Assert
    torch.testing.assert_close(again.item_vectors(), rec.item_vectors())


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The ``crossfed`` entry point in this process (the subprocess tests cover start-up)."""
    from simulations.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_recommend_and_score_commands(run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Prepare
    users = tmp_path / "users.txt"
    users.write_text("user_id\nu000\nu001\n")
    common = ("--run", str(run[0]), "--platform", "app")
    # Execute
    as_json = _cli(capsys, "recommend", *common, "--users", str(users), "-k", "4")
    as_csv = _cli(capsys, "recommend", *common, "--user", "u000", "-k", "4", "--format", "csv")
    scored = _cli(capsys, "score", *common, "--user", "u000", "--items", "app-003", "app-007")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user_id,item_id\nu001,app-007\nu000,app-003\nu001,app-003\n")
    from_pairs = _cli(capsys, "score", *common, "--pairs", str(pairs), "--format", "csv")
    bad = _cli(capsys, "recommend", *common, "--user", "ghost")
    # Assert
    assert as_json[0] == 0, as_json[2]
    document = json.loads(as_json[1])
    assert sorted(document["recommendations"]) == ["u000", "u001"]
    assert all(len(top) == 4 for top in document["recommendations"].values())
    rows = list(csv.DictReader(io.StringIO(as_csv[1])))
    assert [r["item_id"] for r in rows] == [s["item_id"] for s in document["recommendations"]["u000"]]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert scored[0] == 0, scored[2]
    assert [s["item_id"] for s in json.loads(scored[1])["scores"]] == ["app-003", "app-007"]
    assert from_pairs[0] == 0, from_pairs[2]
    rows = list(csv.DictReader(io.StringIO(from_pairs[1])))  # in the file's order, each the user's own score
    asked = [("u001", "app-007"), ("u000", "app-003"), ("u001", "app-003")]
    assert [(r["user_id"], r["item_id"]) for r in rows] == asked
    rec = Recommender.from_run(run[0], "app", device="cpu")
    expected = [float(rec.score(user, [item])[0]) for user, item in asked]
    assert [float(r["score"]) for r in rows] == pytest.approx(expected, rel=1e-5)
    assert (
        bad[0] == 2
        and bad[2].strip()
        == "crossfed: error: unknown user 'ghost' on this platform (cold start: "
        "score a new user by the shared model alone with --cold-start / cold_start=True)"
    )


@pytest.mark.parametrize("merge", [True, False])
def test_export_loads_with_transformers_and_scores_like_the_run(
    run: tuple[Path, Path], rec: Recommender, tmp_path: Path, merge: bool, capsys: pytest.CaptureFixture
) -> None:
    # Prepare
    out = tmp_path / "export"
    # Execute
    code, _, err = _cli(capsys, "export", "--run", str(run[0]), "--out", str(out), *(["--merge"] if merge else []))
    # Assert: the folder, its card and its config
    assert code == 0, err
    again = _cli(capsys, "export", "--run", str(run[0]), "--out", str(out))
    assert again[0] == 2 and "exists and is not empty (pass --overwrite" in again[2]
    assert {p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")] if p.is_dir()} == {result_dir_mode()}
    assert {p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()} == {result_mode()}  # no stray 0600
    card = (out / "README.md").read_text()
    summary = json.loads((run[0] / SUMMARY_FILE).read_text())
    assert f"{summary['test']['app']['auc']:.4f}" in card and "lora.r = 4" in card
    if merge:
        from transformers import AutoModel

        assert not (out / "adapter_config.json").exists()
        AutoModel.from_pretrained(out)  # plain transformers
    else:
        adapter_config = json.loads((out / "adapter_config.json").read_text())
        assert adapter_config["task_type"] == "FEATURE_EXTRACTION"
        assert adapter_config["base_model_name_or_path"] == "base" and (out / "base" / "config.json").is_file()
    # ... and the shipped scoring module gives the run's shared-model scores
    sys.path.insert(0, str(out))
    try:
        import crossfed_scoring

        model = crossfed_scoring.CrossfedScorer.from_pretrained(out)
    finally:
        sys.path.remove(str(out))
        sys.modules.pop("crossfed_scoring", None)
    data = make_synthetic(seed=0)["app"]
    ids = rec.part.table.ids
    texts = [crossfed_scoring.item_text(data.items[i].title, data.items[i].text) for i in ids]
    vectors = model.item_vectors(texts)
    user = sorted(rec.histories)[0]
    history = rec.histories[user]
    rows = [rec.part.table.rows(h) for h in (history.liked, history.disliked)]
    shared = Recommender.from_run(run[0], "app", device="cpu", cache=False)
    for p in shared.part.private.parameters():
        p.data.zero_()  # the export is the shared model only; the platform supplies its item statistics
    stats = shared.item_stats.cpu()
    for output in ("like", "rank"):
        got = model.score(vectors[rows[0]], vectors[rows[1]], vectors, stats, output=output).numpy()
        np.testing.assert_allclose(got, shared.score(user, ids, output=output), rtol=1e-4, atol=1e-5)


@pytest.fixture
def http(rec: Recommender) -> Iterator[str]:
    """A real uvicorn server on a free port, in a thread, serving the app platform."""
    import uvicorn

    from clients.serve import create_app

    server = uvicorn.Server(uvicorn.Config(create_app({"app": rec}), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _get(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_answers_real_http(http: str, rec: Recommender) -> None:
    user = sorted(rec.histories)[1]
    status, health = _get(f"{http}/health")
    assert status == 200 and health["status"] == "ok" and health["platforms"]["app"]["items"] == 90
    status, top = _get(f"{http}/platforms/app/recommend?user_id={user}&k=3")
    assert status == 200 and [i["item_id"] for i in top["items"]] == [s.item_id for s in rec.top_k(user, 3)]
    status, scored = _get(f"{http}/platforms/app/score", {"user_id": user, "item_ids": ["app-001", "app-002"]})
    assert status == 200
    assert [s["score"] for s in scored["scores"]] == pytest.approx(rec.score(user, ["app-001", "app-002"]).tolist())
    assert _get(f"{http}/platforms/app/recommend?user_id=ghost")[0] == 404
    assert _get(f"{http}/platforms/mars/recommend?user_id={user}")[0] == 404
    assert _get(f"{http}/platforms/app/recommend?user_id={user}&k=0")[0] == 422
    status, error = _get(f"{http}/platforms/app/score", {"user_id": user, "item_ids": ["NOPE"]})
    assert status == 422 and "NOPE" in error["detail"]
    assert _get(f"{http}/platforms/app/score", {"user_id": user})[0] == 422


def test_serve_command(run: tuple[Path, Path]) -> None:
    # Prepare: a free port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "simulations.cli", "serve", "--run", str(run[0]), "--platform",
                             "app", "--platform", "web_shop", "--port", str(port)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        # Execute: wait for it, then ask both platforms
        deadline, health = time.time() + 120, None
        while health is None:
            assert proc.poll() is None and time.time() < deadline, "crossfed serve did not come up"
            try:
                health = _get(f"http://127.0.0.1:{port}/health")[1]
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        status, top = _get(f"http://127.0.0.1:{port}/platforms/web_shop/recommend?user_id=u000&k=2")
        # Assert
        assert sorted(health["platforms"]) == ["app", "web_shop"]
        assert status == 200 and len(top["items"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_continue_training_on_appended_data(run: tuple[Path, Path], tmp_path: Path) -> None:
    # Prepare: new interactions appended (a new user, a known user's new like)
    data = tmp_path / "data"
    write_dataset(data, make_synthetic(seed=0).values())
    with open(data / "app" / "interactions.csv", "a") as fh:
        fh.write("newbie,app-003,1750000000,5\nnewbie,app-004,1750000001,1\nu000,app-005,1750000002,5\n")
    out = tmp_path / "run2"
    # Execute: the documented command
    result = _crossfed("simulate", "--continue-from", str(run[0]), "--data", str(data), "--out", str(out),
                       "--rounds", "1", "--cpus", "2", timeout=600)  # fmt: skip
    # Assert: one new round, numbered after the old ones, from the old adapter; recommendations see the new data
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    old = json.loads((run[0] / SUMMARY_FILE).read_text())
    assert summary["continued_from"]["after_round"] == old["rounds_run"] == 2
    assert [json.loads(line)["round"] for line in (out / ROUNDS_FILE).read_text().splitlines()] == [3]
    assert summary["config"]["lora.r"] == 4 and summary["config"]["data.dir"] == str(data)
    rec2 = Recommender.from_run(out, "app", device="cpu")
    assert "newbie" in rec2.histories and "app-005" not in {s.item_id for s in rec2.top_k("u000", 90)}


def test_continue_with_another_model_is_one_clear_line(run: tuple[Path, Path], tmp_path: Path) -> None:
    result = _crossfed("simulate", "--continue-from", str(run[0]), "--out", str(tmp_path / "run2"), "--set",
                       "lora.r=8")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot continue a run of another model: `lora.r` (4 there, 8 now)" in result.stderr
    assert not (tmp_path / "run2").exists()
