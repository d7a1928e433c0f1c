"""Mixed tables (issue 26, phase 1): column kinds, missing cells, levels, bad input, encoding.

Real CSV and Parquet files in tmp_path, read by the real readers; the schema fitted by prepare()
on the training rows, as a run fits it.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bnserve.training.cli import main
from bnserve.training.config import TrainConfig
from bnserve.training.data.loading import load_dataset, load_split
from bnserve.training.errors import DataError
from bnserve.training.train import prepare

QUIET = ["--no-progress", "--no-plot", "--no-checkpoints", "--hidden", "8", "--epochs", "2"]


def mixed_csv(tmp_path, rows: int = 120) -> str:
    """An R-style row index, numbers with gaps, a text column with a rare level, yes/no, a
    constant and an all-missing column, and a class target."""
    lines = ['"",size,colour,member,always,never,label']
    for i in range(rows):
        size = "NA" if i % 10 == 3 else f"{(i * 7) % 23 / 2}"
        colour = "violet" if i == 5 else ("red", "green", "blue")[i % 3]
        member = "yes" if i % 4 else "no"
        lines.append(f"{i + 1},{size},{colour},{member},7,,{'ab'[(i // 3) % 2]}")
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_kinds_fills_levels_and_left_out_columns_come_from_the_training_rows(tmp_path):
    config = TrainConfig(data=mixed_csv(tmp_path))
    prepared = prepare(config, cache_dir="off")
    schema = prepared.schema
    assert schema is not None and not schema.plain
    by_name = {column.name: column for column in schema.columns}
    assert by_name[""].kind == "ignored" and by_name[""].why.startswith("row index")
    assert by_name["always"].why == "constant 7" and by_name["never"].why == "all missing"
    size = by_name["size"]
    assert size.kind == "numeric" and size.indicator
    x_train = np.asarray(prepared.dataset.x[prepared.split.train], dtype=np.float64)
    sizes = x_train[:, 1]
    assert size.missing_count == int(np.isnan(sizes).sum()) > 0
    assert size.fill == pytest.approx(np.nanmean(sizes))  # the mean of the training rows only
    colour = by_name["colour"]
    assert colour.kind == "categorical"
    assert [value for value, _ in colour.levels] == ["blue", "green", "red"]
    in_training = 5 in prepared.split.train  # row 5 is the one violet
    assert colour.rare == ((("violet", 1),) if in_training else ())
    assert [value for value, _ in by_name["member"].levels] == ["no", "yes"]
    assert schema.inputs[:2] == ["size", "size:missing"]
    assert prepared.x_train.shape == (len(prepared.split.train), len(schema.inputs))


def test_text_columns_are_stored_as_small_integer_codes_in_the_float32_cache(tmp_path):
    dataset = load_dataset(mixed_csv(tmp_path), cache_dir=str(tmp_path / "cache"))
    x = np.asarray(dataset.x)
    assert x.dtype == np.float32 and dataset.mixed
    assert dataset.vocabularies[2] == ("red", "green", "blue", "violet")  # first seen first
    np.testing.assert_array_equal(x[:6, 2], [0, 1, 2, 0, 1, 3])
    assert dataset.vocabularies[1] is None and np.isnan(x[3, 1])  # NA: a missing number
    again = load_dataset(mixed_csv(tmp_path), cache_dir=str(tmp_path / "cache"))  # the cache
    assert again.vocabularies == dataset.vocabularies
    np.testing.assert_array_equal(np.asarray(again.x), x)


def test_one_hot_other_and_missing_inputs(tmp_path):
    prepared = prepare(TrainConfig(data=mixed_csv(tmp_path), min_level_count=50), cache_dir="off")
    encoder = prepared.encoder
    assert encoder is not None
    names = prepared.schema.inputs if prepared.schema else []
    raw = np.array([[1, np.nan, 0, 1, 7, np.nan], [2, 3.0, 3, 0, 7, np.nan]], dtype=np.float32)
    design = encoder.encode(raw)
    row = dict(zip(names, design[0], strict=True))
    assert row["size:missing"] == 1 and row["size"] == prepared.schema.columns[1].fill
    # 120 rows, 84ish training rows: each colour ~28 < 50, so all join <other>
    colour_inputs = [name for name in names if name.startswith("colour=")]
    assert colour_inputs == ["colour=<other>"] or colour_inputs == []
    assert np.all(prepared.input_std[~encoder.standardized_inputs] == 1)
    assert np.all(prepared.input_mean[~encoder.standardized_inputs] == 0)


def test_a_level_seen_only_in_test_rows_is_unseen_and_scored(tmp_path):
    path = tmp_path / "t.csv"
    lines = ["size,colour,label"] + [
        f"{i % 9},{('red', 'green')[i % 2]},{'ab'[(i // 2) % 2]}" for i in range(100)
    ]
    path.write_text("\n".join(lines) + "\n")
    config = TrainConfig(data=str(path), hidden=(8,), epochs=2)
    _, split = load_split(config, cache_dir="off")
    test_row = int(split.test[0])
    lines[test_row + 1] = f"3,zebra,{lines[test_row + 1][-1]}"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert main(["--out", str(out), "--data", str(path), "--cache-dir", "off", *QUIET]) == 0
    schema = json.loads((out / "schema.json").read_text())
    (colour,) = [column for column in schema["columns"] if column["name"] == "colour"]
    assert [level["value"] for level in colour["levels"]] == ["green", "red"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["unseen_levels"]["test"] == {"colour": 1}
    assert meta["unseen_levels"]["dev"] == {"colour": 0}


@pytest.mark.parametrize(
    ("cell", "flag", "message"),
    [
        ('"3,5"', None, "'3,5' is not a number, in a column of numbers"),
        ("n/a", None, "'n/a' is not a number, in a column of numbers"),
        ("n/a", "--numeric", None),
        ("n/a", "--categorical", None),
    ],
)
def test_a_typo_in_a_column_of_numbers_is_refused_with_both_ways_out(
    tmp_path, capsys, cell, flag, message
):
    lines = ["size,label"] + [f"{i % 13},{'ab'[i % 2]}" for i in range(60)]
    lines[31] = f"{cell},a"
    path = tmp_path / "typo.csv"
    path.write_text("\n".join(lines) + "\n")
    extra = [flag, "size"] if flag else []
    code = main(["--out", str(tmp_path / "run"), "--data", str(path), *QUIET, *extra])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0
        return
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("bnserve train: error: ")
    assert f"typo.csv: line 32, column 'size': {message}" in err
    assert "--numeric size" in err and "--categorical size" in err


def test_more_levels_than_max_levels_is_refused_with_a_hint_to_ignore(tmp_path, capsys):
    path = tmp_path / "ids.csv"
    path.write_text("id,x,label\n" + "".join(f"u{i},{i % 5},{i % 2}\n" for i in range(60)))
    code = main(["--out", str(tmp_path / "r"), "--data", str(path), *QUIET, "--max-levels", "10"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "column 'id' has" in err and "more than --max-levels 10" in err
    assert "--ignore id" in err
    ignored = main(["--out", str(tmp_path / "r2"), "--data", str(path), *QUIET, "--ignore", "id"])
    assert ignored == 0


def test_missing_targets_are_counted_and_refused_unless_dropped(tmp_path, capsys):
    path = tmp_path / "gaps.csv"
    rows = [
        f"{i % 7},{'' if i in (10, 20) else 'NA' if i == 30 else 'ab'[i % 2]}" for i in range(60)
    ]
    path.write_text("x,label\n" + "\n".join(rows) + "\n")
    code = main(["--out", str(tmp_path / "r"), "--data", str(path), *QUIET])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "gaps.csv: line 12, column 'label': 3 row(s) have no target value" in err
    assert "--drop-missing-target" in err
    out = tmp_path / "r2"
    assert main(["--out", str(out), "--data", str(path), *QUIET, "--drop-missing-target"]) == 0
    split = json.loads((out / "meta.json").read_text())["split"]
    assert split["train_rows"] + split["dev_rows"] + split["test_rows"] == 57


def test_describe_prints_the_schema_and_trains_nothing(tmp_path, capsys):
    code = main(["--describe", "--data", mixed_csv(tmp_path), "--cache-dir", "off"])
    out = capsys.readouterr().out
    assert code == 0
    assert "schema from 84 training rows" in out
    assert "'': left out (row index 1, 2, 3, …)" in out
    assert "'always': left out (constant 7)" in out
    assert "'never': left out (all missing)" in out
    assert "'size': numeric (inferred), fill" in out and "+ a missing indicator" in out
    assert "'member': categorical (inferred): no" in out


def test_the_run_prints_one_line_per_column_kind(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--data", mixed_csv(tmp_path), *QUIET]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("columns: 1 numeric column(s): size (")
    assert lines[1].startswith("columns: 2 categorical column(s): colour (")
    assert lines[2] == (
        "columns: 3 ignored column(s): '' (row index 1, 2, 3, …), always (constant 7), "
        "never (all missing)"
    )


def test_parquet_dictionary_string_boolean_columns_and_nulls(tmp_path):
    rows = 60
    colour = pa.array([("red", "green", None)[i % 3] for i in range(rows)]).dictionary_encode()
    table = pa.table(
        {
            "size": pa.array([None if i % 7 == 0 else float(i % 5) for i in range(rows)]),
            "colour": colour,
            "member": pa.array([i % 4 != 0 for i in range(rows)]),
            "name": pa.array([("ann", "bob")[i % 2] for i in range(rows)]),
            "label": pa.array([i % 2 for i in range(rows)]),
        }
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    prepared = prepare(TrainConfig(data=str(path)), cache_dir="off")
    by_name = {column.name: column for column in prepared.schema.columns} if prepared.schema else {}
    assert by_name["size"].kind == "numeric" and by_name["size"].indicator
    assert by_name["colour"].kind == "categorical" and by_name["colour"].missing_count > 0
    assert [value for value, _ in by_name["colour"].levels] == ["green", "red"]
    assert [value for value, _ in by_name["member"].levels] == ["false", "true"]
    assert [value for value, _ in by_name["name"].levels] == ["ann", "bob"]
    x = np.asarray(prepared.dataset.x)
    assert np.isnan(x[0, 0]) and np.isnan(x[2, 1])  # null number, null level


def test_a_table_of_numbers_without_gaps_is_read_and_trained_as_before(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("a,b,y\n" + "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(40)))
    prepared = prepare(TrainConfig(data=str(path)), cache_dir="off")
    assert prepared.encoder is None and prepared.schema is not None and prepared.schema.plain
    assert not prepared.dataset.mixed
    out = tmp_path / "run"
    assert main(["--out", str(out), "--data", str(path), *QUIET]) == 0
    assert not (out / "schema.json").exists()


def test_unknown_column_in_a_flag_is_named(tmp_path):
    with pytest.raises(DataError, match=r"--ignore 'nope': no such column"):
        prepare(TrainConfig(data=mixed_csv(tmp_path), ignore=("nope",)), cache_dir="off")


def test_a_mixed_table_with_another_delimiter_and_a_byte_order_mark(tmp_path, capsys):
    lines = ["size;colour;label"] + [
        f"{'NA' if i == 7 else i % 9};{('red', 'green')[i % 2]};{'ab'[(i // 2) % 2]}"
        for i in range(60)
    ]
    lines[41] = "4;n/a;a"  # a text cell in a text column: just a level
    lines[31] = "x3;red;a"  # a typo in a column of numbers: named by its line
    path = tmp_path / "semi.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode())
    code = main(["--out", str(tmp_path / "r"), "--data", str(path), "--delimiter", ";", *QUIET])
    assert code == 2
    assert "semi.csv: line 32, column 'size': 'x3' is not a number" in capsys.readouterr().err
    lines[31] = "3;red;a"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode())
    config = TrainConfig(data=str(path), delimiter=";")
    prepared = prepare(config, cache_dir="off")
    assert prepared.schema is not None
    assert [column.kind for column in prepared.schema.columns] == ["numeric", "categorical"]


def test_a_dictionary_column_reads_as_the_same_cells_in_plain_strings(tmp_path):
    """Read from its indices (only the dictionary trimmed and matched against the missing
    tokens), a dictionary column gives the codes and vocabulary of the same cells as strings:
    padded values, a missing token in the dictionary, an entry never used, nulls; and numbers
    with nulls and NaN read as numbers."""
    rows = 90
    cells = [(" red", "green", None, "NA", "red ", "blue")[(i * 7) % 6] for i in range(rows)]
    dictionary = pa.array(["unused", " red", "green", "NA", "red ", "blue"])  # Parquet: no null
    index_of = {None: None, " red": 1, "green": 2, "NA": 3, "red ": 4, "blue": 5}
    indices = pa.array(
        [None if i % 11 == 0 else index_of[c] for i, c in enumerate(cells)], pa.int32()
    )
    plain_cells = [None if i % 11 == 0 else c for i, c in enumerate(cells)]
    size = pa.array(
        [np.nan if i % 5 == 0 else None if i % 7 == 0 else float(i) for i in range(rows)]
    )
    label = pa.array([i % 2 for i in range(rows)])
    read = {}
    for name, colour in (
        ("dictionary", pa.DictionaryArray.from_arrays(indices, dictionary)),
        ("plain", pa.array(plain_cells, pa.string())),
    ):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"size": size, "colour": colour, "label": label}), path)
        prepared = prepare(TrainConfig(data=str(path)), cache_dir="off")
        read[name] = (np.asarray(prepared.dataset.x), prepared.dataset.vocabularies)
    x, vocabularies = read["dictionary"]
    np.testing.assert_array_equal(x, read["plain"][0])  # NaN in the same places too
    assert vocabularies == read["plain"][1]
    assert list(vocabularies[1]) == ["green", "red", "blue"]  # first seen first, trimmed
    assert np.isnan(x[0, 0]) and np.isnan(x[7, 0]) and x[1, 0] == 1.0  # NaN, null, a number
