"""``crossfed bench catalogue``: the large-catalogue shops it builds, and one tiny end-to-end run."""

import json

import pytest

from simulations.bench.catalogue import cache_bytes, main, make_catalogue_shops


def test_catalogue_shops_are_implicit_long_texts_of_the_asked_size_and_seeded() -> None:
    shops = make_catalogue_shops(platforms=2, items=50, words=40, users=7, per_user=9, seed=3)
    assert sorted(shops) == ["store0", "store1"]
    for shop in shops.values():
        assert shop.feedback == "implicit" and len(shop.items) == 50
        assert all(len(it.text.split()) == 40 for it in shop.items.values())
        assert all(row.value is None and row.item_id in shop.items for row in shop.interactions)
        pairs = [(r.user_id, r.item_id) for r in shop.interactions]
        assert len(pairs) == len(set(pairs))  # one click per user and item
        assert shop.num_users == 7 and len(pairs) <= 7 * 9
    assert not set(shops["store0"].items) & set(shops["store1"].items)  # own ids per shop
    again = make_catalogue_shops(platforms=2, items=50, words=40, users=7, per_user=9, seed=3)
    assert again["store1"].interactions == shops["store1"].interactions
    assert again["store1"].items == shops["store1"].items


def test_cache_bytes_counts_two_models_of_fp32_token_states() -> None:
    assert cache_bytes(items=10_000, max_length=32, hidden=384) == 2 * 10_000 * 32 * 384 * 4


@pytest.mark.slow
def test_bench_catalogue_runs_the_cpu_preset_on_a_tiny_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--quick", "--items", "60", "--platforms", "2", "--json"])
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["items"] == 60 and result["platforms"] == 2 and len(result["rounds"]) == 1
    assert result["peak_rss_bytes"] > 0 and result["within_memory"]
    assert result["rounds"][0]["train_s"] > 0 and result["rounds"][0]["evaluate_s"] > 0
