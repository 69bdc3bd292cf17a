"""The SQLite result store: atomic rows, no overwrite of finished work, runs, and bad files."""

import math
import sqlite3

import pytest

from slt.sweeps.store import ResultStore, StoredResult, settings_hash


def _row(cid="a", key="k", step=1, status="done", **kw):
    defaults = dict(
        summary={"llc_mean": 1.5, "llc_stderr": math.nan}, payload={"llc": {"trace": [[1.0, 2.0]]}}
    )
    defaults.update(kw)
    return StoredResult(
        checkpoint_id=cid, settings_hash=key, step=step, source=f"{cid}.pt", status=status, **defaults
    )


def test_settings_hash_is_stable_and_order_free():
    assert settings_hash({"a": 1, "b": [1, 2]}) == settings_hash({"b": [1, 2], "a": 1})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2})
    assert len(settings_hash({})) == 16


def test_rows_round_trip_and_finished_rows_are_never_replaced(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        key = store.register_run({"seed": 0})
        assert store.record(_row("a", key, 1, seconds=0.5))
        assert not store.record(_row("a", key, 1, summary={"llc_mean": 99.0}))  # a rerun cannot overwrite
        assert store.record(_row("b", key, 2, status="failed", error="ValueError: broken", summary={}))
        assert store.record(_row("b", key, 2, summary={"llc_mean": 3.0}))  # a retry replaces the failure
        assert store.statuses(key) == {"a": "done", "b": "done"}
    with ResultStore(path) as store:
        rows = store.results(key)
        assert [(r.checkpoint_id, r.step, r.summary["llc_mean"]) for r in rows] == [
            ("a", 1, 1.5),
            ("b", 2, 3.0),
        ]
        assert rows[0].summary["llc_stderr"] is None  # NaN is stored as JSON null
        assert rows[0].payload == {"llc": {"trace": [[1.0, 2.0]]}} and rows[0].seconds == 0.5
        assert store.count() == 2 and store.count(key, "done") == 2
        assert [r.checkpoint_id for r in store.results(key, ["b"])] == ["b"]


def test_failures_keep_their_message(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        key = store.register_run({})
        store.record(
            _row("x", key, 5, status="failed", error="CheckpointError: could not read x.pt", summary={})
        )
        (row,) = store.results(key)
        assert not row.ok and row.error == "CheckpointError: could not read x.pt"
        run = store.runs()[0]
        assert (run.num_done, run.num_failed) == (0, 1)


def test_several_runs_share_a_store_and_the_latest_is_the_default(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        first = store.register_run({"seed": 0})
        second = store.register_run({"seed": 1})
        store.record(_row("a", first, 1))
        store.record(_row("a", second, 1, summary={"llc_mean": 2.0}))
        assert store.resolve_run().settings_hash == second
        assert store.resolve_run(first[:6]).settings == {"seed": 0}
        assert store.register_run({"seed": 0}) == first  # using it again makes it the latest
        assert store.resolve_run().settings_hash == first
        with pytest.raises(ValueError, match=r"no run .* match settings hash"):
            store.resolve_run("zzzz")


def test_write_ahead_log_lets_a_reader_see_committed_rows_while_the_writer_is_open(tmp_path):
    path = tmp_path / "r.sqlite"
    store = ResultStore(path)
    key = store.register_run({})
    store.record(_row("a", key, 1))
    reader = sqlite3.connect(path)
    assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reader.execute("SELECT COUNT(*) FROM results WHERE status = 'done'").fetchone()[0] == 1
    reader.close()
    store.close()


def test_a_file_that_is_not_a_store_gives_a_clear_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a usable slt result store"):
        ResultStore(bad)
    with pytest.raises(ValueError, match="does not exist"):
        ResultStore(tmp_path / "missing" / "r.sqlite")
    with ResultStore(":memory:") as memory, pytest.raises(ValueError, match="holds no results yet"):
        memory.resolve_run()


@pytest.mark.parametrize(
    "column, value, expected",
    [
        ("summary", "{not json", "a JSON object"),
        ("payload", "[1, 2]", "a JSON object"),
        ("step", "ten", "an integer"),
        ("seconds", "slow", "a number"),
        ("finished", b"\x00", "a number"),
        ("source", b"\x01", "text"),
    ],
)
def test_a_crafted_row_is_named_by_row_and_column(tmp_path, column, value, expected):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        key = store.register_run({"a": 1})
        for step in (1, 2):
            store.record(StoredResult(f"ckpt-{step}", key, step, "src", "done", summary={"x": 1.0}))
    conn = sqlite3.connect(path)
    conn.execute(f"UPDATE results SET {column} = ? WHERE checkpoint_id = 'ckpt-2'", (value,))
    conn.commit()
    conn.close()
    with ResultStore(path, readonly=True) as store:
        message = rf"row 2 of table results \(checkpoint 'ckpt-2'\) has .* in column '{column}', "
        message += f"expected {expected}"
        with pytest.raises(ValueError, match=message):
            store.results(key)
