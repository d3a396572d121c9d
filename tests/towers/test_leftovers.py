import os

from towers.leftovers import owner_alive, remove_dead, work_dir

DEAD = str(2**22 + 1)  # above Linux's default pid_max: no such process


def test_owner_alive():
    assert owner_alive(str(os.getppid())) and owner_alive(str(os.getpid()))
    assert not owner_alive(str(os.getpid()), mine_too=True)
    assert not owner_alive(DEAD) and not owner_alive("x12")


def test_remove_dead_keeps_live_writers_and_other_names(tmp_path):
    mine = work_dir(tmp_path, ".tmp-1-")
    assert mine.name.startswith(f".tmp-1-{os.getpid()}-")
    for name in (f".tmp-1-{DEAD}-a", f".tmp-1-{os.getppid()}-b", ".tmp-2-7-c", "1"):
        (tmp_path / name).mkdir()
    (tmp_path / f".tmp-1-{DEAD}.partial").write_text("x")  # a file, too
    assert sorted(remove_dead(tmp_path, ".tmp-1-")) == [
        f".tmp-1-{DEAD}-a",
        f".tmp-1-{DEAD}.partial",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [mine.name, f".tmp-1-{os.getppid()}-b", ".tmp-2-7-c", "1"]
    )
    assert remove_dead(tmp_path, ".tmp-1-", mine_too=True) == [mine.name]
    assert remove_dead(tmp_path / "missing", ".tmp-") == []
