"""benchmarks/eval_cost.py's code path on a tiny model (its figures are the benchmark's, never asserted)."""

from helpers import load_script


def test_the_eval_cost_table_counts_the_runs_evaluations(cache_dir, monkeypatch, capsys):
    monkeypatch.setenv("DREAMRELATION_CACHE", str(cache_dir))
    script = load_script("benchmarks/eval_cost.py")
    script.main(["--model", "tiny-random", "--steps", "5", "--eval-every", "2"])
    row = capsys.readouterr().out.splitlines()[2].split("|")
    assert [cell.strip() for cell in row[1:7]] == ["tiny-random", "orbits", "quick", "5", "2", "3"]  # 2, 4, 5
