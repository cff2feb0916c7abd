"""Files the lab's processes and threads share are never seen half written, and concurrent changes
are never lost (nodegate/lab/shared_files.py).

The seed pin race is the case that broke `make bench` on a fresh clone: 16 nodes booting at once
(a supervisor thread each) met DIR/seed-layer while one of them was writing it with a plain
write_text, read an empty path and failed to boot with "the seed layer this lab started from (.)
is no longer cached". The 16-node lab itself is booted against a cold pin in tests/bench.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from nodegate.core.errors import PermanentError
from nodegate.lab import seed, shared_files
from nodegate.lab.config import LabConfig
from nodegate.lab.faults import FaultBook

NODES = 16          # the largest lab (config.MAX_NODES)
CALLS = 20          # per node thread: first boots, then reboots and resets read the pin again
ROUNDS = 5


def test_sixteen_nodes_booting_at_once_all_get_the_seed_layer_from_a_cold_pin(tmp_path):
    """A thread per node, all let go at once on a lab whose pin does not exist yet, each asking for
    the seed layer again and again: every answer is the one pinned layer, in every round. (The plain
    write_text this replaced failed in each of 5 such rounds, 15 to 57 times, with the "(.)" above.)"""
    for round_ in range(ROUNDS):
        config = LabConfig.new(tmp_path / f"lab{round_}", NODES)
        config.dir.mkdir(parents=True)
        answers, errors = boot_at_once(config)
        assert not errors, f"round {round_}: {len(errors)} failed reads, first: {errors[0]}"
        pinned = Path((config.dir / seed.SEED_PIN).read_text().strip())
        assert (pinned.parent / "complete").exists()
        assert len(answers) == NODES * CALLS and set(answers) == {pinned}


def boot_at_once(config: LabConfig) -> tuple[list[Path], list[BaseException]]:
    """NODES threads let go at once, each asking CALLS times for the lab's seed layer."""
    answers: list[Path] = []
    errors: list[BaseException] = []
    go = threading.Event()

    def node() -> None:
        go.wait()
        for _ in range(CALLS):
            try:
                answers.append(seed.seed_layer(config))
            except Exception as exc:   # noqa: BLE001 - collected: the test's assertion names them all
                errors.append(exc)

    threads = [threading.Thread(target=node) for _ in range(NODES)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(timeout=120)
    return answers, errors


def test_a_damaged_pin_is_refused_by_name(tmp_path):
    config = LabConfig.new(tmp_path / "lab", 1)
    config.dir.mkdir(parents=True)
    (config.dir / seed.SEED_PIN).write_text("\n")
    with pytest.raises(PermanentError, match="does not name a layer") as refused:
        seed.seed_layer(config)
    assert str(config.dir / seed.SEED_PIN) in str(refused.value)


def test_a_reader_never_sees_a_file_being_replaced_half_written(tmp_path):
    path = tmp_path / "state.json"
    shared_files.write_json(path, {"n": 0, "pad": "x" * 4096})
    stop = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            text = path.read_text()
            if not text.endswith("}\n"):
                seen.append(text[:40])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(1, 2000):
            shared_files.write_json(path, {"n": n, "pad": "x" * 4096})
    finally:
        stop.set()
        thread.join()
    assert not seen, f"{len(seen)} partial reads, e.g. {seen[0]!r}"
    assert shared_files.read_json(path)["n"] == 1999
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]   # no temporary file left


def test_changes_from_several_processes_at_once_are_all_kept(tmp_path):
    """faults.json is changed by `nodegate lab fault` and `lab reset`, which tests on several
    workers run at once: each change is made under the file's lock, so none is lost."""
    script = textwrap.dedent(f"""
        import sys
        from nodegate.lab.faults import FaultBook
        for i in range(25):
            with FaultBook.editing({str(tmp_path)!r}) as book:
                book.add("pdb-block", f"w{{sys.argv[1]}}-{{i}}", {{}})
                book.save()
    """)
    workers = [subprocess.Popen([sys.executable, "-c", script, str(w)]) for w in range(4)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0, 0]
    assert len(FaultBook(tmp_path).nodes("pdb-block")) == 4 * 25


def test_a_damaged_file_is_an_error_naming_it_not_an_empty_default(tmp_path):
    """A fault book that does not parse must not read as "no faults"."""
    (tmp_path / "faults.json").write_text('{"pdb-block": {"nod')
    with pytest.raises(shared_files.SharedFileError, match="faults.json"):
        FaultBook(tmp_path)
    assert shared_files.read_json(tmp_path / "absent.json", {"default": 1}) == {"default": 1}


def test_a_secret_file_is_never_readable_by_others(tmp_path):
    path = tmp_path / "lab.json"
    shared_files.write_atomic(path, "token\n", mode=0o600)
    assert path.stat().st_mode & 0o777 == 0o600
