"""The benchmark's deferred deletion: trees leave the way at once but are freed only when the
disk runs short, and a run after a mass deletion waits out the file system's window."""

from __future__ import annotations

import bench.trash as trash_mod
from bench.trash import Trash


def _tree(root, files: int):
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"f{i}").write_bytes(b"x")
    return root


def test_put_moves_a_tree_out_of_the_way_without_deleting_it(tmp_path):
    trash = Trash(tmp_path / "trash", log=lambda _: None)
    run = _tree(tmp_path / "runs" / "a-sift-0", 3)
    trash.put(run)
    trash.put(tmp_path / "never-made")  # nothing there: nothing to do
    assert not run.exists()
    kept = list((tmp_path / "trash").iterdir())
    assert len(kept) == 1
    assert len(list(kept[0].iterdir())) == 3
    # The same name can go to the trash again (each run reuses its directory's name).
    trash.put(_tree(run, 1))
    assert len(list((tmp_path / "trash").iterdir())) == 2


def test_nothing_is_freed_or_awaited_while_the_disk_has_room(tmp_path, monkeypatch):
    slept = []
    monkeypatch.setattr(trash_mod.time, "sleep", slept.append)
    trash = Trash(tmp_path / "trash", log=lambda _: None, min_free=0)
    trash.put(_tree(tmp_path / "run", 5))
    trash.before_run()
    assert (tmp_path / "trash").exists()
    assert slept == []


def test_a_short_disk_empties_the_trash_and_the_next_run_waits_out_the_window(
    tmp_path, monkeypatch
):
    slept, said = [], []
    monkeypatch.setattr(trash_mod.time, "sleep", slept.append)
    monkeypatch.setattr(trash_mod, "FEW_FILES", 4)
    trash = Trash(tmp_path / "trash", log=said.append, min_free=1 << 62)
    trash.put(_tree(tmp_path / "run", 5))
    trash.before_run()
    assert not (tmp_path / "trash").exists()
    assert len(slept) == 1
    assert 0 < slept[0] <= trash_mod.COOL_DOWN
    assert any("emptied the trash: 6 entries" in line for line in said)
    # The window was waited out once; an empty trash costs the next run nothing.
    trash.before_run()
    assert len(slept) == 1


def test_deleting_a_few_files_is_not_worth_a_wait(tmp_path, monkeypatch):
    slept = []
    monkeypatch.setattr(trash_mod.time, "sleep", slept.append)
    trash = Trash(tmp_path / "trash", log=lambda _: None, min_free=1 << 62)
    trash.put(_tree(tmp_path / "run", 5))
    trash.before_run()
    assert not (tmp_path / "trash").exists()
    assert slept == []
