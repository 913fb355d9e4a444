"""The one checkpoint policy (core.checkpoint): a checkpoint is resumed only for the same fingerprint,
and the process's torch thread count is part of every fingerprint (it changes a CPU run's bits)."""

import torch

from knowsubnet.core import checkpoint


def test_a_checkpoint_resumes_for_its_fingerprint_and_thread_count_only(tmp_path, caplog):
    path, threads = tmp_path / "checkpoint.pt", torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        checkpoint.save(path, {"params": 1}, {"step": 3})
        assert checkpoint.load(path, {"params": 1}) == {"step": 3}
        assert checkpoint.load(path, {"params": 2}) is None
        torch.set_num_threads(1)
        with caplog.at_level("WARNING", logger="knowsubnet.core.checkpoint"):
            assert checkpoint.load(path, {"params": 1}) is None
    finally:
        torch.set_num_threads(threads)
    assert "(changed: compute)" in caplog.records[-1].message
