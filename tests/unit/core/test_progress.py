"""Progress: a tqdm bar on a terminal, a few plain log lines elsewhere."""

import logging

from knowsubnet.core import progress


def test_log_progress_writes_a_few_plain_lines(caplog, monkeypatch):
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    clock = iter(range(0, 10_000, 1))
    monkeypatch.setattr(progress.time, "monotonic", lambda: float(next(clock)))
    with caplog.at_level(logging.INFO, logger="knowsubnet.core.progress"):
        bar = progress.progress_bar(total=100, desc="mask")
        assert isinstance(bar, progress.LogProgress)
        for _ in range(100):
            bar.update(1)
            bar.set_postfix(loss="0.5")
        bar.close()
        items = list(progress.progress_bar(range(5), desc="eval"))
    lines = [r.getMessage() for r in caplog.records]
    assert items == list(range(5))
    assert 2 <= len(lines) <= 12 and all("\r" not in line for line in lines)
    assert lines[-2].startswith("mask: 100/100 it (100 %)") and lines[-2].endswith("loss=0.5")
    assert lines[-1].startswith("eval: 5/5 it (100 %)")


def test_terminal_gets_a_tqdm_bar_and_disable_silences_both(monkeypatch):
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress.progress_bar(total=3, desc="x")
    assert isinstance(bar, progress.tqdm)
    bar.close()
    quiet = progress.progress_bar(total=3, disable=True)
    quiet.update(1)
    quiet.set_postfix(a=1)
    quiet.close()
