"""The float32 cache: reused while the file is the same, never served for a changed file,
written whole or not at all, read back exactly by RowFile."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bnserve.training.data import cache
from bnserve.training.data.cache import RowFile, load_table
from bnserve.training.errors import DataError


def write_csv(path, rows: int, offset: float = 0.0) -> None:
    lines = "".join(f"{i + offset},{i * 0.5},{i % 3}\n" for i in range(rows))
    path.write_text("a,b,y\n" + lines)


def counting_reader(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = cache.read_table

    def read(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "read_table", read)
    return calls


def test_the_second_load_reuses_the_cache(tmp_path, monkeypatch):
    calls = counting_reader(monkeypatch)
    source = tmp_path / "d.csv"
    write_csv(source, 50)
    first, info = load_table(source, None, tmp_path / "cache")
    second, again = load_table(source, None, tmp_path / "cache")
    assert len(calls) == 1
    assert isinstance(second, RowFile)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    np.testing.assert_array_equal(info.target.codes, again.target.codes)
    assert again.feature_names == ["a", "b"]
    (entry,) = (tmp_path / "cache").iterdir()  # one entry, no temporary left behind
    assert sorted(p.name for p in entry.iterdir()) == [
        "cells.npy",
        "codes.npy",
        "meta.json",
        "x.f32",
    ]


def test_an_entry_is_named_by_size_and_content_hash_however_it_was_hashed(tmp_path):
    import json

    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    write_csv(first, 30)
    second.write_bytes(first.read_bytes().replace(b"\n0.0,", b"\n9.0,"))  # the same size:
    assert first.stat().st_size == second.stat().st_size
    load_table(first, None, tmp_path / "cache")  # nothing of its size cached: hashed meanwhile
    load_table(second, None, tmp_path / "cache")  # hashed before reading
    for source in (first, second):
        sha = cache.content_sha256(source)
        (entry,) = (tmp_path / "cache").glob(f"{source.stat().st_size}-{sha}-*")
        assert json.loads((entry / "meta.json").read_text())["sha256"] == sha


def test_a_large_source_is_announced_once_before_its_first_read(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cache, "NOTICE_BYTES", 100)
    source = tmp_path / "d.csv"
    write_csv(source, 50)
    load_table(source, None, tmp_path / "cache")
    assert capsys.readouterr().err == (
        f"bnserve: reading {source} (0 MB) into the float32 cache in {tmp_path / 'cache'}, "
        "once: later runs read it in place\n"
    )
    load_table(source, None, tmp_path / "cache")  # read in place: nothing to announce
    assert capsys.readouterr().err == ""


def test_a_file_written_to_during_its_first_read_leaves_no_entry(tmp_path, monkeypatch):
    source = tmp_path / "d.csv"
    write_csv(source, 50)
    real = cache.read_table

    def read_while_appended(path, target, sink, *settings):
        info = real(path, target, sink, *settings)
        with source.open("a") as handle:  # another program still writing the file
            handle.write("99.0,1.5,2\n")
        return info

    monkeypatch.setattr(cache, "read_table", read_while_appended)
    with pytest.raises(DataError, match=r"d.csv: changed while being read; run again"):
        load_table(source, None, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # neither the entry nor a temporary


def test_a_changed_file_is_never_served_from_the_old_entry(tmp_path, monkeypatch):
    calls = counting_reader(monkeypatch)
    source = tmp_path / "d.csv"
    write_csv(source, 50)
    old, _ = load_table(source, None, tmp_path / "cache")
    stat = source.stat()
    changed = source.read_bytes().replace(b"\n3.0,", b"\n4.0,", 1)  # same size
    source.write_bytes(changed)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    assert (source.stat().st_size, source.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    new, _ = load_table(source, None, tmp_path / "cache")
    assert len(calls) == 2
    expected = np.asarray(old).copy()
    expected[3, 0] = 4.0
    np.testing.assert_array_equal(np.asarray(new), expected)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the old contents' entry is gone


def test_another_target_column_is_another_entry(tmp_path):
    source = tmp_path / "d.csv"
    write_csv(source, 20)
    _, info_last = load_table(source, None, tmp_path / "cache")
    _, info_a = load_table(source, "a", tmp_path / "cache")
    assert info_last.feature_names == ["a", "b"] and info_a.feature_names == ["b", "y"]
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_a_failed_read_leaves_no_entry(tmp_path):
    source = tmp_path / "bad.csv"
    source.write_text("a,y\n1,0\n2,1\n" + "inf,1\n")  # (a text cell is a categorical level)
    with pytest.raises(DataError, match="line 4"):
        load_table(source, None, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_damaged_entry_is_rebuilt(tmp_path, monkeypatch):
    calls = counting_reader(monkeypatch)
    source = tmp_path / "d.csv"
    write_csv(source, 30)
    expected, _ = load_table(source, None, tmp_path / "cache")
    expected = np.asarray(expected)
    (entry,) = (tmp_path / "cache").iterdir()
    with (entry / "x.f32").open("r+b") as handle:
        handle.truncate(100)  # e.g. a disk that filled up under another tool
    again, _ = load_table(source, None, tmp_path / "cache")
    assert len(calls) == 2
    np.testing.assert_array_equal(np.asarray(again), expected)


def test_an_unwritable_cache_dir_is_one_clear_error(tmp_path):
    source = tmp_path / "d.csv"
    write_csv(source, 10)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DataError, match=r"cannot write the data cache .*--cache-dir"):
        load_table(source, None, blocker / "cache")


def test_cache_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("BNSERVE_CACHE_DIR", str(tmp_path))
    assert cache.cache_dir_setting() == tmp_path
    assert cache.cache_dir_setting("off") is None
    assert cache.cache_dir_setting(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.delenv("BNSERVE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir_setting() == tmp_path / "xdg" / "bnserve" / "data"


@pytest.mark.parametrize(("piece", "gap"), [(64, 16 << 10), (1 << 20, 20), (1 << 20, 1 << 20)])
def test_rowfile_gathers_any_rows_in_the_order_asked(tmp_path, monkeypatch, piece, gap):
    monkeypatch.setattr(RowFile, "PIECE_BYTES", piece)  # many pieces for a small file
    monkeypatch.setattr(RowFile, "GAP_BYTES", gap)  # or a read per row
    x = np.random.default_rng(0).standard_normal((300, 5)).astype(np.float32)
    path = tmp_path / "x.f32"
    x.tofile(path)
    rows = RowFile(path, 300, 5)
    picks = np.random.default_rng(1).permutation(300)[:120]
    np.testing.assert_array_equal(rows[picks], x[picks])
    np.testing.assert_array_equal(rows[np.array([7, 7, 3])], x[[7, 7, 3]])
    np.testing.assert_array_equal(rows[10:20], x[10:20])
    np.testing.assert_array_equal(rows[-1], x[-1])
    np.testing.assert_array_equal(rows[5:9, 2], x[5:9, 2])
    np.testing.assert_array_equal(rows[np.array([-2, 0])], x[[-2, 0]])
    np.testing.assert_array_equal(rows[np.array([], dtype=int)], x[:0])
    with pytest.raises(IndexError):
        rows[np.array([300])]


def test_train_cli_puts_the_cache_where_cache_dir_says(tmp_path):
    from bnserve.training.cli import main

    source = tmp_path / "d.csv"
    write_csv(source, 60)
    argv = ["--data", str(source), "--epochs", "1", "--hidden", "4", "--no-plot", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--cache-dir", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c").iterdir())) == 1
    assert (
        main([*argv, "--out", str(tmp_path / "b"), "--cache-dir", "off", "--blas-threads", "1"])
        == 0
    )
    assert len(list((tmp_path / "c").iterdir())) == 1


def test_two_processes_building_one_entry_both_get_it(tmp_path, monkeypatch):
    source = tmp_path / "d.csv"
    write_csv(source, 40)
    real = cache.read_table
    raced: list[int] = []

    def read_while_another_finishes(path, target, sink, *settings):
        info = real(path, target, sink, *settings)
        if not raced:  # the other process renames its entry into place during our read
            raced.append(1)
            monkeypatch.setattr(cache, "read_table", real)
            load_table(source, None, tmp_path / "cache")
        return info

    monkeypatch.setattr(cache, "read_table", read_while_another_finishes)
    x, info = load_table(source, None, tmp_path / "cache")
    assert info.rows == 40 and np.asarray(x).shape == (40, 2)
    assert [p.name.startswith(".tmp-") for p in (tmp_path / "cache").iterdir()] == [False]


def write_parquet(path, values: list[float]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": values, "y": [i % 2 for i in range(len(values))]}), path)


def test_a_parquet_entry_is_named_by_its_footer_and_mtime_without_hashing_its_bytes(
    tmp_path, monkeypatch
):
    import json

    def no_whole_file_hash(path):
        raise AssertionError(f"{path} hashed whole")

    monkeypatch.setattr(cache, "content_sha256", no_whole_file_hash)
    calls = counting_reader(monkeypatch)
    source = tmp_path / "d.parquet"
    write_parquet(source, [0.5, 1.5, 2.5, 3.5])
    first, _ = load_table(source, None, tmp_path / "cache")
    again, _ = load_table(source, None, tmp_path / "cache")
    assert len(calls) == 1  # the same file: read in place
    assert isinstance(again, RowFile)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    (entry,) = (tmp_path / "cache").iterdir()
    sha = cache.parquet_footer_sha256(source, source.stat().st_mtime_ns)
    assert entry.name.startswith(f"{source.stat().st_size}-{sha}-")
    assert json.loads((entry / "meta.json").read_text())["hashed"] == "footer and mtime"

    stat = source.stat()
    write_parquet(source, [0.5, 1.5, 2.5, 9.5])  # other values: other statistics in the footer
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    assert source.stat().st_size == stat.st_size
    changed, _ = load_table(source, None, tmp_path / "cache")
    assert len(calls) == 2
    assert np.asarray(changed)[:, 0].tolist() == [0.5, 1.5, 2.5, 9.5]

    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: the same bytes
    load_table(source, None, tmp_path / "cache")
    assert len(calls) == 3  # read again (an mtime is all a touch changes)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # older entries of the file removed


def test_a_file_that_only_ends_like_parquet_falls_back_to_its_content_hash(tmp_path):
    source = tmp_path / "short.parquet"
    source.write_bytes(b"PAR1\x00\x00\x00\x00PAR1")  # a footer of length 0 (not Parquet)
    assert cache.parquet_footer_sha256(source, 0) is not None
    source.write_bytes(b"PAR1 not parquet")
    assert cache.parquet_footer_sha256(source, 0) is None
    with pytest.raises(DataError, match=r"short.parquet: not a readable Parquet file"):
        load_table(source, None, tmp_path / "cache")


def test_a_failed_cache_write_is_the_cache_dirs_error_and_leaves_no_entry(tmp_path, monkeypatch):
    import errno

    source = tmp_path / "d.parquet"
    write_parquet(source, [float(i) for i in range(50)])

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache._SyncingWriter, "write", full)
    with pytest.raises(DataError, match=r"cache: cannot write the data cache \(.*No space left"):
        load_table(source, None, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_background_writer_writes_blocks_in_order_and_bounds_what_waits(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "PENDING_BYTES", 64)
    monkeypatch.setattr(cache, "SYNC_BYTES", 100)
    blocks = [np.full(7, i, dtype=np.float32) for i in range(40)]  # 28 bytes each
    waiting: list[int] = []
    with (tmp_path / "x.f32").open("wb") as handle:
        writer = cache.BackgroundWriter(cache._SyncingWriter(handle))
        try:
            for block in blocks:
                writer.write(block.data)
                waiting.append(writer.pending_bytes)
            writer.sync()
        finally:
            writer.close()
    assert max(waiting) <= 64
    written = np.fromfile(tmp_path / "x.f32", dtype=np.float32)
    np.testing.assert_array_equal(written, np.concatenate(blocks))
