"""cache_lock: builders of one cache entry run one at a time; the later ones find the entry built."""

from __future__ import annotations

import threading
import time

from uncover.core.locks import cache_lock


def test_builders_of_one_entry_take_turns_and_build_it_once(tmp_path):
    entry, log, built = tmp_path / "entry", [], []

    def build(i: int) -> None:
        with cache_lock(entry):
            log.append(("in", i))
            if not entry.exists():
                time.sleep(0.2)  # a slow build: the other thread must wait, not build too
                entry.mkdir()
                built.append(i)
            log.append(("out", i))

    threads = [threading.Thread(target=build, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and entry.is_dir()
    assert all(log[k][0] == "in" and log[k + 1] == ("out", log[k][1]) for k in range(0, len(log), 2))
