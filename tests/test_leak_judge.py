"""benchmarks/leak_judge.py: the leak judge on the toy VAE's round trip of clips with and without an exemplar subject."""

from helpers import load_script


def test_the_judge_finds_every_real_exemplar_subject_through_the_vae(capsys):
    load_script("benchmarks/leak_judge.py").main(["--clips", "1"])
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| clips")}
    assert len(rows) == 4
    for kind, (count, judged, _) in rows.items():
        assert count == "2"  # one clip per held-out relation
        if not kind.startswith("ground truth"):
            assert judged == "1.00", kind
