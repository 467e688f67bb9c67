"""Nothing written is lost or half-written: ``atomic_write`` and checkpoints under failure."""

import os

import pytest
import torch

from emergent.platform.checkpoint import atomic_write, load_checkpoint, save_checkpoint


class Boom(Exception):
    pass


def test_a_write_that_fails_midway_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    path = tmp_path / "last.pt"
    atomic_write(path, lambda f: f.write(b"old contents"))

    def half(f):
        f.write(b"new cont")  # half of the new file is on disk ...
        f.flush()
        raise Boom  # ... when the writer fails

    with pytest.raises(Boom):
        atomic_write(path, half)
    assert path.read_bytes() == b"old contents"
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # the temporary file is gone
    atomic_write(path, lambda f: f.write(b"new contents"))
    assert path.read_bytes() == b"new contents"


def test_a_checkpoint_save_that_fails_midway_leaves_the_last_checkpoint_loadable(tmp_path, monkeypatch):
    from emergent.platform import checkpoint

    path = tmp_path / "last.pt"
    state = {"step": 3, "model": {"w": torch.ones(4)}, "config": ""}
    save_checkpoint(path, state)
    real_save = torch.save

    def dies_midway(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        f.truncate(f.tell() // 2)  # a torn write: half the bytes
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {**state, "step": 4})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 3 and sorted(os.listdir(tmp_path)) == ["last.pt"]
