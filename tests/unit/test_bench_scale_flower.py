"""Pure parts of ``crossfed bench scale --engine flower``: process kinds, tree sums, budget, growth."""

import pytest

from deploy.loadbench.memory import MIB, MemoryPeaks
from simulations.bench.scale_flower import RAY_KINDS, flower_budget, per_platform_growth, ray_process_kind


@pytest.mark.parametrize(("cmdline", "kind"), [
    (["ray::IDLE"], "worker"),
    (["ray::ClientAppActor.run"], "worker"),
    (["/v/bin/python", "/v/lib/ray/_private/workers/default_worker.py", "--node-ip-address=x"], "worker"),
    (["/v/bin/python", "-m", "simulations.bench.scale", "--child", "3", "--engine", "flower"], "driver"),
    (["/v/lib/ray/core/src/ray/gcs/gcs_server", "--log_dir=/tmp/ray"], "gcs"),
    (["/v/lib/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=/tmp/ray/s"], "raylet"),
    (["ray::DashboardAgent"], "ray-agent"),
    (["ray::RuntimeEnvAgent"], "ray-agent"),
    (["/v/bin/python", "/v/lib/ray/dashboard/dashboard.py", "--host=127.0.0.1"], "ray-agent"),
    (["/v/bin/python", "-u", "/v/lib/ray/autoscaler/_private/monitor.py", "--logs-dir=x"], "ray-agent"),
    (["/v/bin/python", "-u", "/v/lib/ray/_private/log_monitor.py", "--logs-dir=/tmp/ray"], "ray-agent"),
    (["sleep", "1"], "other"),
])  # fmt: skip
def test_ray_process_kind(cmdline: list[str], kind: str) -> None:
    assert ray_process_kind(cmdline) == kind


def test_tree_sum_over_ray_kinds_lists_them_in_order() -> None:
    # Prepare: two snapshots of a driver, two workers, a raylet
    peaks = MemoryPeaks(order=RAY_KINDS)
    # Execute
    peaks.add([("worker", 500 * MIB, 300 * MIB), ("driver", 600 * MIB, 400 * MIB), ("raylet", 90 * MIB, 50 * MIB)])
    peaks.add([("worker", 500 * MIB, 300 * MIB), ("worker", 200 * MIB, 100 * MIB), ("driver", 550 * MIB, 380 * MIB)])
    out = peaks.as_dict()
    # Assert: the sum is per snapshot (1190 then 1250), not a sum of per-kind peaks (1390)
    assert peaks.all_total == 1250.0 and peaks.all_anon == 780.0
    assert list(out["peak_process_mib"]) == ["driver", "worker", "raylet"]
    assert out["peak_total_mib"] == {"driver": 600.0, "worker": 700.0, "raylet": 90.0}
    assert out["max_processes"] == {"driver": 1, "worker": 2, "raylet": 1}


def test_kinds_outside_the_order_come_last_by_name() -> None:
    peaks = MemoryPeaks(order=("b",))
    peaks.add([("z", MIB, 0), ("b", MIB, 0), ("a", MIB, 0)])
    assert list(peaks.as_dict()["peak_process_mib"]) == ["b", "a", "z"]


def test_flower_budget_counts_a_base_per_actor_and_the_driver() -> None:
    # 2 actors + driver = 3 bases of 100, 10 adapters of 7, slack 1000
    assert flower_budget(2, 10, 100, 7, 1000.0) == 3 * 100 + 10 * 7 + 1000
    assert flower_budget(1, 100, 4_041_216, 121_352, 1.5 * 1024**3) == 2 * 4_041_216 + 100 * 121_352 + 1_610_612_736


def test_per_platform_growth_is_against_the_first_row() -> None:
    rows = [{"platforms": 3, "peak_sum_rss_bytes": 1000}, {"platforms": 10, "peak_sum_rss_bytes": 1070},
            {"platforms": 100, "peak_sum_rss_bytes": 1970}]  # fmt: skip
    assert per_platform_growth(rows) == [None, 10.0, 10.0]
    assert per_platform_growth([]) == []


def test_sampler_sums_a_real_process_tree_by_kind() -> None:
    # Prepare: a shell with two sleeping children, sampled from the shell down
    import subprocess
    import time

    from deploy.loadbench.memory import MemorySampler

    shell = subprocess.Popen(["bash", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        time.sleep(0.3)
        sampler = MemorySampler(lambda: [shell.pid], 0.0, classify=lambda argv: argv[0], kinds=("bash", "sleep"))
        # Execute
        snapshot = sampler.snapshot()
        sums = sampler.peaks.add(snapshot)
    finally:
        import psutil

        for child in psutil.Process(shell.pid).children():
            child.kill()
        shell.kill()
        shell.wait()
    # Assert: three processes, summed per kind and overall
    assert sorted(kind for kind, _, _ in snapshot) == ["bash", "sleep", "sleep"]
    assert all(rss > 0 and 0 <= anon <= rss for _, rss, anon in snapshot)
    assert sampler.peaks.processes == {"bash": 1, "sleep": 2}
    assert sampler.peaks.all_total == pytest.approx(sum(rss for _, rss, _ in snapshot) / MIB)
    assert sums["sleep"] == pytest.approx(sum(rss for kind, rss, _ in snapshot if kind == "sleep") / MIB)


def test_a_forked_copy_of_a_process_is_a_fork_not_a_second_of_its_kind() -> None:
    # Prepare: a Python process that forks without exec (as subprocess does for a moment before
    # it execs a daemon): parent and child show the same command line
    import subprocess
    import sys
    import time

    import psutil

    from deploy.loadbench.memory import FORK, MemorySampler

    code = "import os, time; os.fork(); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)
        sampler = MemorySampler(lambda: [parent.pid], 0.0, classify=lambda argv: "driver", kinds=("driver", FORK))
        # Execute
        snapshot = sampler.snapshot()
    finally:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait()
    # Assert: the root keeps its kind, its copy is counted apart
    assert sorted(kind for kind, _, _ in snapshot) == ["driver", FORK]


def test_federation_roots_are_every_daemon_and_its_companions() -> None:
    from types import SimpleNamespace

    from deploy.loadbench.memory import federation_roots

    def daemon(pid: int, *companions: int) -> SimpleNamespace:
        return SimpleNamespace(proc=SimpleNamespace(pid=pid), companions=[SimpleNamespace(pid=c) for c in companions])

    fed = SimpleNamespace(superlink=daemon(1), nodes={"a": daemon(2, 3), "b": daemon(4)})
    assert federation_roots(fed) == [1, 2, 3, 4]  # type: ignore[arg-type]
    assert federation_roots(SimpleNamespace(superlink=None, nodes={"a": daemon(5)})) == [5]  # type: ignore[arg-type]
