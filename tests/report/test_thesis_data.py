"""The thesis' published values as data (reports/thesis-results.csv): ten cells read by hand from
the thesis text, so a typo in the transcription fails here, and the file's shape (every table, every
row valid).
"""

from __future__ import annotations

import pytest

from mmhpc.report.thesis import THESIS_CSV, cell, thesis_values

# (table, row label, column label) -> (value, ±) as printed in the thesis
HAND_PICKED = {
    ("4.13", "CREMA-D", "DDP Speedup"): (1.67, None),
    ("4.16", "MVSA", "Speedup"): (3.51, None),
    ("4.16", "CREMAD", "Default Time (s)"): (16.75, None),
    ("4.6", "MVSA T", "No TF32"): (20.06, None),
    ("4.10", "AVE", "Util. Gain"): (23.42, None),
    ("4.11", "IEMOCAP 128", "Std Util. (%)"): (68.93, None),
    ("4.15", "URFUNNY", "DDP (s)"): (21.613, None),
    ("4.1", "IEMOCAP V", "Rel"): (43.0, 0.39),  # the ± from Table A.3
    ("4.2", "Entropy Gated", "IEMOCAP2"): (57.0, 1.65),  # the ± from Table A.7
    ("A.12", "Trained Epochs Entropy", "IEMOCAP3 Audio"): (18.0, 4.91),
}


@pytest.mark.parametrize("key", list(HAND_PICKED))
def test_hand_picked_cells(key):
    value, pm = HAND_PICKED[key]
    got = cell(*key)
    assert got.value == value and got.se == pm


def test_every_table_is_there_with_its_keys():
    v = thesis_values()
    expected = {"2.4", "2.5"} | {f"4.{i}" for i in range(1, 17)} | {f"A.{i}" for i in range(1, 14)}
    assert set(v["table"]) == expected
    assert len(v[v["table"] == "4.1"]) == 153  # 17 printed rows x 9 methods
    # PMR's missing three-modality cells are empty values, not zeros
    assert (
        v[(v["table"] == "4.3") & (v["row"] == "PMR") & (v["column"] == "IEMOCAP3")]["value"]
        .isna()
        .all()
    )
    speedups = v[v["metric"] == "speedup"]
    assert (speedups["baseline"] != "").all() and (speedups["unit"] == "x").all()
    times = v[(v["metric"] == "time_epoch_s") & ~v["table"].isin(["2.4"])]
    assert (times["gpu"] != "").all() and times["batch_size"].notna().all()


def test_a_bad_row_is_named_with_file_line_and_field(tmp_path):
    bad = tmp_path / "thesis.csv"
    lines = THESIS_CSV.read_text().splitlines()
    lines[3] = lines[3].replace(",A100,", ",A10O,", 1)
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"thesis.csv: line 4: gpu"):
        thesis_values(bad)
