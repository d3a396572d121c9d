"""The synthetic world: shapes, determinism, learnable structure, and bad configs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from towers.synthetic import (
    MANIFEST,
    Catalogue,
    SyntheticConfig,
    draw_events,
    generate,
    shard_paths,
)


def test_generate_writes_whole_users_per_shard(tmp_path):
    config = SyntheticConfig(num_users=250, num_items=80, users_per_shard=100, seed=3)
    manifest = generate(config, tmp_path)
    events = shard_paths(tmp_path)
    users = shard_paths(tmp_path, "users")
    assert [p.name for p in events] == ["part-00000.parquet", "part-00001.parquet",
                                        "part-00002.parquet"]  # fmt: skip
    frames = [pd.read_parquet(p) for p in events]
    total = pd.concat(frames)
    assert manifest["events"] == len(total)
    # Every user lives in exactly one shard, and shards hold 100, 100 and 50 users.
    assert [f["user_id"].nunique() for f in frames] == [100, 100, 50]
    assert total.groupby("user_id").ngroups == 250
    # Within a user, time never goes backwards, and no item repeats.
    assert total.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()
    assert not total.duplicated(["user_id", "item_id"]).any()
    assert total["rating"].between(0.5, 5.0).all()
    # The user tables list each user's items in event order.
    table = pd.read_parquet(users[0]).set_index("user_id")
    first = frames[0]
    u = first["user_id"].iloc[0]
    assert list(table.loc[u, "history"]) == first.loc[first["user_id"] == u, "item_id"].tolist()
    items = pd.read_parquet(tmp_path / "items.parquet")
    assert len(items) == 80 and set(total["item_id"]) <= set(items["item_id"])
    pairs = zip(items["topic"], items["genres"], strict=True)
    assert all(f"topic{t:02d}" == g[0] for t, g in pairs)
    with pytest.raises(FileExistsError, match=MANIFEST):
        generate(config, tmp_path)


def test_same_seed_same_world_and_users_follow_their_taste():
    config = SyntheticConfig(num_users=400, num_items=200, num_topics=4, stickiness=0.0, seed=1)
    world = Catalogue.draw(config, np.random.default_rng(1))
    a = draw_events(config, world, 0, 400, seed=5)
    b = draw_events(config, world, 0, 400, seed=5)
    pd.testing.assert_frame_equal(a, b)
    # Tastes are focused (Dirichlet 0.08 over 4 topics): a user's most common topic holds far
    # more of their events than the 1/4 a tasteless user would have.
    topic = world.topic[a["item_id"].str[1:].astype(int).to_numpy()]
    share = (
        pd.Series(topic)
        .groupby(a["user_id"].to_numpy())
        .agg(lambda t: t.value_counts(normalize=True).iloc[0])
    )
    assert share.mean() > 0.6


def test_popularity_is_heavy_tailed():
    config = SyntheticConfig(num_users=2000, num_items=1000, seed=2)
    world = Catalogue.draw(config, np.random.default_rng(2))
    counts = draw_events(config, world, 0, 2000, seed=3)["item_id"].value_counts()
    # The top 10 % of items get far more than 10 % of the events.
    assert counts.iloc[:100].sum() / counts.sum() > 0.3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_users", 0),
        ("num_items", 0),
        ("stickiness", 1.0),
        ("events_per_user", 0),
        ("num_topics", 20_000),
        ("events_per_user", float("nan")),
        ("topic_concentration", float("nan")),
        ("item_zipf", float("nan")),
        ("activity_sigma", -1.0),
        ("span_days", 0),
        ("seed", -1),
        ("users_per_shard", 2.5),
        ("num_users", True),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**{field: value})


def test_shard_paths_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        shard_paths(tmp_path)


def test_cli_writes_a_world_and_refuses_to_overwrite_it(tmp_path, capsys):
    from serving.cli import main

    argv = ["generate-synthetic", "--output", str(tmp_path), "--num-users", "30",
            "--num-items", "12", "--num-topics", "3", "--users-per-shard", "10"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["users"] == 30 and manifest["shards"] == 3
    assert len(shard_paths(tmp_path)) == 3
    assert main(argv) == 2  # exists: a clear error, nothing overwritten
    assert len(shard_paths(tmp_path)) == 3


def test_generate_is_all_or_nothing_and_keeps_other_files(tmp_path, monkeypatch):
    from towers import synthetic

    config = SyntheticConfig(num_users=30, num_items=12, num_topics=3, users_per_shard=10)
    real, calls = synthetic.draw_events, []

    def dies_on_the_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "draw_events", dies_on_the_second_shard)
    with pytest.raises(OSError, match="disk full"):
        generate(config, tmp_path / "world")
    assert list(tmp_path.iterdir()) == []  # no partial world, no work directory
    monkeypatch.undo()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "items.parquet").write_text("someone's own")
    with pytest.raises(FileExistsError, match="already holds other files"):
        generate(config, mine)
    assert (mine / "items.parquet").read_text() == "someone's own"
    assert generate(config, tmp_path / "world")["shards"] == 3
