"""benchmarks/cache_warmth.py: a cold run encodes with the text encoder and the VAE, a warm one on the same cache
never loads them (facts read from the runs, not their timings)."""

import pytest

from helpers import load_script


def test_the_warm_run_encodes_nothing_and_never_loads_the_encoders(tmp_path, capsys):
    script = load_script("benchmarks/cache_warmth.py")
    script.main(["--videos", "2", "--frames", "5", "--size", "32", "--steps", "1", "--work", str(tmp_path / "w")])
    rows = [line.strip("| ").split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    by_run = {row[0]: row for row in rows[2:]}
    assert list(by_run) == ["cold", "warm", "warm/cold"]
    # clips encoded, encoders loaded
    assert by_run["cold"][3:5] == ["2", "text_encoder, vae"]
    assert by_run["warm"][3:5] == ["0", "none"]
    assert float(by_run["cold"][1]) > 0 and float(by_run["warm"][1]) > 0


def test_a_cold_run_needs_an_empty_work_folder(tmp_path):
    script = load_script("benchmarks/cache_warmth.py")
    (tmp_path / "cache").mkdir()
    with pytest.raises(SystemExit, match="is not empty; a cold run needs an empty cache"):
        script.main(["--work", str(tmp_path)])
