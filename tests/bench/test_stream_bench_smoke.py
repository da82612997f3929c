"""scripts/bench_stream.py on a small blob, in this process: the three sides run (the reader's thread
writing, the hash cursor writing, the floor), the download verifies, the ratio is printed."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_stream.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_stream", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_stream_prints_both_writers_against_the_floor(bench, tmp_path, capsys):
    out = tmp_path / "stream.json"
    assert bench.main(["--size-mib", "2", "--rounds", "1", "--gap", "0", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cursor / reader" in printed and "shuffled" in printed
    res = json.loads(out.read_text())
    assert res["piece_kib"] == 128 and res["size_mib"] == 2
    for kind in ("in_order", "shuffled"):
        for side in ("reader_writes", "cursor_writes", "floor"):
            assert res[kind][f"median_{side}_ms_per_MB"] > 0


def test_bench_stream_refuses_bad_options(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--rounds", "0"])
    assert exc.value.code == 2 and "wants --size-mib" in capsys.readouterr().err
