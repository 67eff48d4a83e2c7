"""The ingest journal: round trips, torn tails and bit flips, group commit, retirement, reuse.

A copy of the folder taken while a journal is open is what a ``kill -9`` leaves behind (the
page cache holds every pwrite), so crash tests copy the folder and open the copy.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import zlib
from pathlib import Path

import pytest

from node.ingest import journal as journal_module
from node.ingest.journal import Durability, Journal, JournalError, Ticket
from node.ingest.journal_format import (
    HEADER_SIZE,
    KIND_DATA,
    KIND_OPEN,
    encode_header,
    free_name,
    segment_name,
)

SMALL = 64 * 1024


def payload(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def write_records(
    journal: Journal, count: int, seed: int = 1, max_size: int = 6000
) -> list[tuple[Ticket, dict[str, str | int], bytes]]:
    """``count`` records of random sizes, each given as several chunks of mixed types."""
    rng = random.Random(seed)
    written = []
    for i in range(count):
        data = payload(rng, rng.randrange(0, max_size))
        cut = rng.randrange(0, len(data) + 1)
        chunks = [data[:cut], memoryview(bytearray(data[cut:]))]
        meta: dict[str, str | int] = {"index": i, "sop": f"1.2.3.{seed}.{i}", "é": "ü"}
        ticket = journal.append(meta, chunks)
        journal.commit(ticket)
        written.append((ticket, meta, data))
    return written


def read_back(folder: Path, **options: object) -> list[tuple[int, dict, bytes]]:
    with Journal.open(folder, segment_size=SMALL, **options) as journal:
        return [(r.sequence, dict(r.meta), bytes(r.data)) for r in journal.read()]


def as_expected(written: list[tuple[Ticket, dict, bytes]]) -> list[tuple[int, dict, bytes]]:
    return [(ticket.sequence, meta, data) for ticket, meta, data in written]


def crash_copy(folder: Path, into: Path) -> Path:
    """The folder as a kill -9 would leave it: what was written, no seal."""
    shutil.copytree(folder, into)
    return into


def test_round_trip_across_segments(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j", segment_size=SMALL)
    written = write_records(journal, 300)
    live = [(r.sequence, dict(r.meta), bytes(r.data)) for r in journal.read()]
    assert live == as_expected(written)
    assert [r.sequence for r in journal.read(after=123)] == list(range(124, 301))
    assert len(journal.segments()) >= 5
    assert journal.stats().records == 300
    journal.close()
    assert read_back(tmp_path / "j") == as_expected(written)
    assert all(t.sequence == i + 1 for i, (t, _, _) in enumerate(written))


def test_restart_continues_numbering_and_sequences(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    with Journal.open(folder, segment_size=SMALL) as journal:
        first = write_records(journal, 40)
        old_segments = journal.segments()
    with Journal.open(folder, segment_size=SMALL) as journal:
        assert journal.last_sequence == 40
        second = write_records(journal, 10, seed=2)
        assert second[0][0].sequence == 41
        assert second[0][0].segment > max(old_segments)
        everything = [(r.sequence, bytes(r.data)) for r in journal.read()]
    assert everything == [(t.sequence, d) for t, _, d in first + second]


def test_oversized_record_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    big = os.urandom(3 * SMALL + 123)
    with Journal.open(folder, segment_size=SMALL, pool_size=4) as journal:
        small = journal.append({"n": 1}, [b"x" * 100])
        ticket = journal.append({"n": 2}, [big[:1000], big[1000:]])
        journal.commit(ticket)
        after = journal.append({"n": 3}, [b"y" * 5000])  # more than its rounding slack
        assert small.segment < ticket.segment < after.segment
        assert [bytes(r.data) for r in journal.read()] == [b"x" * 100, big, b"y" * 5000]
        journal.rotate()
        assert journal.retire_through(3) == 3
        # the standard-size segments went to the pool, the oversized one was removed; the
        # oldest pooled file is at once the next segment, which keeps the sequence
        assert sorted(n for n in os.listdir(folder) if n.endswith(".wal")) == [
            free_name(after.segment),
            segment_name(after.segment + 1),
        ]
    with Journal.open(folder, segment_size=SMALL) as journal:
        assert journal.last_sequence == 3
        assert journal.append({}, [b"z"]).sequence == 4


@pytest.mark.parametrize("how", ["truncate", "zero"])
def test_cut_at_any_offset_recovers_exactly_the_records_before_it(tmp_path: Path, how: str) -> None:
    source = tmp_path / "source"
    journal = Journal.open(source, segment_size=SMALL)
    written = write_records(journal, 40, max_size=1200)
    assert len(journal.segments()) == 1
    image = (source / segment_name(written[0][0].segment)).read_bytes()
    end = written[-1][0].offset + written[-1][0].length
    rng = random.Random(7)
    boundaries = [t.offset + delta for t, _, _ in written for delta in (-1, 0, 1)]
    cuts = sorted({*boundaries, *(rng.randrange(0, end + HEADER_SIZE) for _ in range(200))})
    for k in cuts:
        folder = tmp_path / f"cut-{how}-{k}"
        folder.mkdir()
        cut = image[:k] if how == "truncate" else image[:k] + bytes(len(image) - k)
        (folder / segment_name(written[0][0].segment)).write_bytes(cut)
        expected = [(t.sequence, m, d) for t, m, d in written if t.offset + t.length <= k]
        assert read_back(folder) == expected, f"cut at {k}"
        shutil.rmtree(folder)
    journal.close()


def test_a_bit_flip_drops_the_record_and_everything_after_it_in_that_segment(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    with Journal.open(source, segment_size=SMALL) as journal:
        written = write_records(journal, 30, max_size=1500)
        journal.rotate()
        later = write_records(journal, 5, seed=3)  # a second segment, untouched
    name = segment_name(written[0][0].segment)
    image = (source / name).read_bytes()
    rng = random.Random(11)
    for trial in range(120):
        victim = rng.randrange(len(written))
        ticket = written[victim][0]
        bit = rng.randrange(ticket.length * 8)
        flipped = bytearray(image)
        flipped[ticket.offset + bit // 8] ^= 1 << (bit % 8)
        folder = tmp_path / f"flip-{trial}"
        shutil.copytree(source, folder)
        (folder / name).write_bytes(flipped)
        expected = as_expected(written[:victim] + later)
        assert read_back(folder) == expected, f"record {victim}, bit {bit}"
        shutil.rmtree(folder)


def test_a_whole_record_out_of_sequence_ends_the_segment(tmp_path: Path) -> None:
    source = tmp_path / "source"
    with Journal.open(source, segment_size=SMALL) as journal:
        written = write_records(journal, 8, max_size=900)
    name = segment_name(written[0][0].segment)
    image = bytearray((source / name).read_bytes())
    ticket, meta, data = written[3]
    meta_len = len(json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode())
    body = image[ticket.offset + HEADER_SIZE : ticket.offset + ticket.length]
    image[ticket.offset : ticket.offset + HEADER_SIZE] = encode_header(
        KIND_DATA, ticket.segment, ticket.sequence + 1, meta_len, len(data), zlib.crc32(body)
    )
    (source / name).write_bytes(image)
    assert read_back(source) == as_expected(written[:3])


def test_a_torn_payload_behind_a_whole_header_does_not_hold_up_retirement(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    journal = Journal.open(source, segment_size=SMALL)
    written = write_records(journal, 10, max_size=2000)
    crashed = crash_copy(source, tmp_path / "crashed")
    journal.close()
    last = written[-1][0]
    path = crashed / segment_name(last.segment)
    with path.open("r+b") as segment:  # the header reached the disk, the payload did not
        segment.seek(last.offset + HEADER_SIZE)
        segment.write(bytes(last.length - HEADER_SIZE))
    with Journal.open(crashed, segment_size=SMALL) as recovered:
        assert [r.sequence for r in recovered.read()] == list(range(1, 10))
        assert recovered.retire_through(9) == 1
        assert last.segment not in recovered.segments()


def test_group_commit_shares_fdatasyncs_and_covers_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fdatasync
    started = [0]  # fdatasync calls begun so far
    finished: list[int] = []  # the start index of each one that has completed
    guard = threading.Lock()

    def counting_fdatasync(fd: int) -> None:
        with guard:
            mine = started[0]
            started[0] += 1
        real(fd)
        with guard:
            finished.append(mine)

    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    journal = Journal.open(tmp_path / "j", segment_size=1024 * 1024)
    failures: list[str] = []
    data = os.urandom(4096)

    def sender(thread: int) -> None:
        for i in range(100):
            ticket = journal.append({"thread": thread, "i": i}, [data])
            with guard:
                begun = started[0]
            journal.commit(ticket)
            with guard:  # some fdatasync that began after the pwrite has completed
                if not any(index >= begun for index in finished):
                    failures.append(f"{thread}/{i}: returned before a covering fdatasync")

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = journal.stats()
    journal.close()
    assert failures == []
    assert stats.records == 800
    assert stats.commit_syncs < 800 // 2, stats
    assert len(read_back(tmp_path / "j")) == 800


def test_os_durability_never_calls_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    with Journal.open(tmp_path / "os", segment_size=SMALL, durability="os") as journal:
        written = write_records(journal, 200)
        assert len(journal.segments()) > 3
        journal.rotate()
        journal.retire_through(100)
    assert calls == []
    assert read_back(tmp_path / "os", durability="os")[0][0] > 1
    with Journal.open(tmp_path / "fsync", segment_size=SMALL) as journal:
        journal.commit(journal.append({}, [b"x"]))
    assert calls
    assert written


def test_retired_segments_are_never_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "j"
    journal = Journal.open(folder, segment_size=SMALL, pool_size=2)
    written = write_records(journal, 300)
    segments = journal.segments()
    through = 150
    kept = [
        s for s in segments if any(t.segment == s and t.sequence > through for t, _, _ in written)
    ]
    retired = journal.retire_through(through)
    assert retired == len(segments) - len(kept) >= 3
    assert journal.segments() == kept
    assert len([n for n in os.listdir(folder) if n.startswith("free-")]) == 2
    crashed = crash_copy(folder, tmp_path / "crashed")
    journal.close()
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(
        os, "open", lambda path, *a, **k: opened.append(Path(path).name) or real_open(path, *a, **k)
    )
    replayed = read_back(crashed)
    first_kept = min(t.sequence for t, _, _ in written if t.segment == kept[0])
    assert replayed == as_expected(written[first_kept - 1 :])
    assert {name for name in opened if name.endswith(".wal")} <= {segment_name(s) for s in kept}


def test_a_reused_segment_never_returns_its_old_records(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    journal = Journal.open(folder, segment_size=SMALL, pool_size=8)
    write_records(journal, 200, max_size=3000)
    journal.rotate()
    assert journal.retire_through(200) >= 4
    fresh = write_records(journal, 3, seed=5, max_size=500)  # fewer records, same files
    assert journal.stats().segments_reused == 1
    crashed = crash_copy(folder, tmp_path / "crashed")  # no SEAL behind the new records
    journal.close()
    assert read_back(crashed) == as_expected(fresh)


def test_old_records_aligned_with_the_expected_sequences_are_refused_by_their_epoch(
    tmp_path: Path,
) -> None:
    """The worst reuse: the new OPEN record expects exactly the sequences the old records
    carry, at exactly their offsets; only the segment number in each header tells them apart."""
    source = tmp_path / "source"
    with Journal.open(source, segment_size=SMALL) as journal:
        old = write_records(journal, 10, max_size=800)
    image = bytearray((source / segment_name(1)).read_bytes())
    image[:HEADER_SIZE] = encode_header(KIND_OPEN, 5, old[0][0].sequence, 0, 0, 0)
    reused = tmp_path / "reused"
    reused.mkdir()
    (reused / segment_name(5)).write_bytes(image)
    assert read_back(reused) == []
    image[:HEADER_SIZE] = encode_header(KIND_OPEN, 1, old[0][0].sequence, 0, 0, 0)
    same_epoch = tmp_path / "same-epoch"  # the control: with the old epoch they would count
    same_epoch.mkdir()
    (same_epoch / segment_name(1)).write_bytes(image)
    assert read_back(same_epoch) == as_expected(old)


def test_a_pooled_file_renamed_before_its_open_record_holds_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    with Journal.open(folder, segment_size=SMALL) as journal:
        old = write_records(journal, 60, max_size=3000)
        journal.rotate()
        journal.retire_through(60)
        fresh = write_records(journal, 2, seed=4)
    pooled = sorted(n for n in os.listdir(folder) if n.startswith("free-"))[0]
    next_number = fresh[0][0].segment + 1  # what the next roll would name it
    os.rename(folder / pooled, folder / segment_name(next_number))
    assert read_back(folder) == as_expected(fresh)
    assert old


def test_a_failed_fdatasync_stops_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(tmp_path / "j", segment_size=SMALL)
    ticket = journal.append({}, [b"x"])

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(JournalError):
        journal.commit(ticket)
    with pytest.raises(JournalError):
        journal.append({}, [b"y"])
    journal.close()


def test_one_writer_per_folder(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j", segment_size=SMALL)
    with pytest.raises(JournalError, match="open elsewhere"):
        Journal.open(tmp_path / "j", segment_size=SMALL)
    journal.close()
    Journal.open(tmp_path / "j", segment_size=SMALL).close()


def test_meta_must_be_str_or_int(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j", segment_size=SMALL) as journal:
        with pytest.raises(TypeError):
            journal.append({"flag": True}, [b""])
        with pytest.raises(TypeError):
            journal.append({"x": 1.5}, [b""])  # type: ignore[dict-item]
    assert journal_module.Durability("os") is Durability.OS
