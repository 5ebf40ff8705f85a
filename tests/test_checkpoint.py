"""The checkpoint format: atomic writes, safe loads, clear errors for corrupt or foreign files."""

from __future__ import annotations

import errno
import os
import pickle

import pytest
import torch

from genctl import checkpoint
from genctl.errors import BadInput


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    p = tmp_path / "c.pt"
    checkpoint.save(
        {"step": 3, "nets": {"g": {"w": torch.arange(4.0)}}, "rng": (1, (2, 3), None)}, p
    )
    ck = checkpoint.load(p)
    assert ck["step"] == 3 and ck["format"] == checkpoint.FORMAT
    assert torch.equal(ck["nets"]["g"]["w"], torch.arange(4.0))


def test_save_leaves_no_temporary_files(tmp_path):
    checkpoint.save({"step": 1}, tmp_path / "c.pt")
    assert os.listdir(tmp_path) == ["c.pt"]


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    p = tmp_path / "c.pt"
    checkpoint.save({"step": 1}, p)
    with pytest.raises((AttributeError, pickle.PicklingError, TypeError)):
        checkpoint.save({"step": 2, "bad": lambda: 0}, p)  # not serialisable
    assert checkpoint.load(p)["step"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


def test_truncated_file_is_bad_input(tmp_path):
    p = tmp_path / "c.pt"
    checkpoint.save({"step": 1, "w": torch.zeros(1000)}, p)
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(BadInput, match="not a readable genctl checkpoint"):
        checkpoint.load(p)


def test_foreign_checkpoint_is_bad_input(tmp_path):
    p = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, p)
    with pytest.raises(BadInput, match="not a genctl checkpoint"):
        checkpoint.load(p)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "x": Evil()}, p)
    with pytest.raises(BadInput):
        checkpoint.load(p)


def test_nbytes_counts_each_tensor_storage_once():
    w = torch.zeros(1000)
    payload = {"a": w, "b": [w, w[:10]], "c": torch.zeros(10, dtype=torch.int64), "d": "x"}
    assert checkpoint.nbytes(payload) == 4000 + 80


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_full_disk_is_an_enospc_error():
    # /dev/full fails every write with ENOSPC, as a full disk does
    with pytest.raises(OSError) as info:
        checkpoint.write({"step": 1, "w": torch.zeros(100_000)}, "/dev/full")
    assert info.value.errno == errno.ENOSPC
