"""Checkpoint files never cost the user what they have: the converter keeps sources and other files, saves follow
the umask and clean up after killed writes, and files that would run code are refused as such."""
import os

import pytest
import torch
from reference_data import requires_official_keys
from test_checkpoint import official_checkpoint

from glip_d2.checkpoint.cli import main


@pytest.fixture()
def official_file(tmp_path):
    src = tmp_path / "glip_a_tiny_o365.pth"
    torch.save(official_checkpoint("T_A"), src)
    return src


@requires_official_keys
def test_refuses_to_write_over_its_source(official_file, capsys):
    before = official_file.read_bytes()
    assert main([str(official_file), str(official_file)]) == 2
    assert "over its source" in capsys.readouterr().err
    assert official_file.read_bytes() == before
    # the same file through another path (a symlink) is the source too
    link = official_file.parent / "link.pth"
    os.symlink(official_file, link)
    assert main([str(official_file), str(link)]) == 2
    assert official_file.read_bytes() == before


@requires_official_keys
def test_existing_output_needs_force(official_file, tmp_path, capsys):
    dst = tmp_path / "out.pth"
    dst.write_bytes(b"keep me")
    assert main([str(official_file), str(dst)]) == 2
    assert "--force" in capsys.readouterr().err and dst.read_bytes() == b"keep me"
    assert main([str(official_file), str(dst), "--force"]) == 0
    assert "model" in torch.load(dst, weights_only=True)


@requires_official_keys
def test_converted_file_as_input_says_so(official_file, tmp_path, capsys):
    dst = tmp_path / "converted.pth"
    assert main([str(official_file), str(dst)]) == 0
    capsys.readouterr()
    assert main([str(dst), str(tmp_path / "again.pth")]) == 2
    assert "already in glip_d2 format" in capsys.readouterr().err
    assert not (tmp_path / "again.pth").exists()


def test_saved_files_follow_the_umask(tmp_path):
    from glip_d2.checkpoint import atomic_torch_save

    old = os.umask(0o022)
    try:
        atomic_torch_save({"x": torch.zeros(1)}, str(tmp_path / "a.pth"))
        os.umask(0o077)
        atomic_torch_save({"x": torch.zeros(1)}, str(tmp_path / "b.pth"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.pth").stat().st_mode & 0o777 == 0o644  # group and others can read, as torch.save
    assert (tmp_path / "b.pth").stat().st_mode & 0o777 == 0o600


def test_stale_temp_files_of_killed_saves_are_removed(tmp_path):
    from glip_d2.checkpoint import GLIPCheckpointer

    stale = tmp_path / ".model_0000099.pth.abc123.tmp"  # what a save killed mid-write leaves
    stale.write_bytes(b"x" * 1000)
    keep = tmp_path / "model_0000049.pth"
    keep.write_bytes(b"a finished checkpoint")
    checkpointer = GLIPCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path))  # resuming a run
    assert not stale.exists() and keep.exists()
    stale.write_bytes(b"x")
    checkpointer.save("model_0000149")
    assert not stale.exists() and (tmp_path / "model_0000149.pth").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000049.pth", "model_0000149.pth"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_files_that_would_run_code_are_refused_as_such(tmp_path, zip_format):
    import pickle

    from glip_d2.checkpoint import UnsafeCheckpointError, load_checkpoint_file

    path = tmp_path / "evil.pth"
    if zip_format:
        torch.save({"model": _RunsCode()}, path)
    else:  # a plain pickle, as older tools write
        with open(path, "wb") as f:
            pickle.dump({"model": _RunsCode()}, f)
    with pytest.raises(UnsafeCheckpointError, match="system") as info:
        load_checkpoint_file(str(path))
    assert "could execute arbitrary code" in str(info.value)
    assert "weights_only=False" not in str(info.value) and "download it again" not in str(info.value)


def test_damaged_file_message_never_suggests_weights_only_false(tmp_path):
    from glip_d2.checkpoint import CorruptCheckpointError, load_checkpoint_file

    path = tmp_path / "cut.pth"
    torch.save({"model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CorruptCheckpointError, match="truncated") as info:
        load_checkpoint_file(str(path))
    assert "weights_only" not in str(info.value)
