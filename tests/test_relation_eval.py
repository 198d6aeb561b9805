"""benchmarks/relation_eval.py --quick runs end to end and reports every row and column (not the numbers)."""

import json

from helpers import load_script


def test_quick_run_reports_every_row_and_column(tmp_path, cache_dir, capsys):
    script = load_script("benchmarks/relation_eval.py")
    out = tmp_path / "results.json"
    argv = ["--quick", "--model", "tiny-random", "--device", "cpu", "--masks", "both", "--cache-dir", str(cache_dir),
            "--work-dir", str(tmp_path / "work"), "--json", str(out), "--rows", ",".join(script.ROWS)]
    script.main(argv)
    table = capsys.readouterr().out

    # Every (row, masks) pair: the mask-free rows once, the others once per mask source.
    expected = [(row.name, masks) for row in script.ROWS.values()
                for masks in (script.MASK_SOURCES if row.uses_masks else ("-",))]
    results = json.loads(out.read_text())
    assert [(r["row"], r["masks"]) for r in results["rows"]] == expected
    relations = results["settings"]["relations"]
    assert relations == ["orbits", "jumps_over"]
    for row in results["rows"]:
        metrics = row["metrics"]
        for column in results["columns"]:
            assert set(metrics[column]) == {"mean", "spread", "per_seed"} and len(metrics[column]["per_seed"]) == 1
        assert set(metrics["relation_accuracy_by_relation"]) == set(relations)
        assert metrics["videos"] == 2 * len(relations) and metrics["fit_videos"] == len(relations)
        assert [v["kind"] for v in row["videos"]] == (["unseen"] * 2 + ["fit"]) * len(relations)
        # The fit prompts are the first exemplar's own caption.
        assert {v["prompt"] for v in row["videos"] if v["kind"] == "fit"} == {
            info["fit_caption"] for info in results["exemplars"].values()}
        assert all(set(v) >= {"prompt", "verdict", "relation_ok", "appearance_ok", "leak"} for v in row["videos"])
    for info in results["exemplars"].values():
        # Prompts name subjects the exemplars never show.
        assert all("red" not in p and "blue" not in p and "square" not in p for p in info["prompts"])
        assert info["basic_mask_quality"]["videos"] == 3

    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| row |"))
    for column in ("masks", "relation acc. (roles)", "rel. acc. orbits", "rel. acc. jumps_over", "appearance acc.",
                   "appearance leak", "fit (exemplar caption)", "videos"):
        assert f"| {column} |" in header
    body = [line for line in lines if line.startswith("| ") and line != header]
    assert [(cells[0], cells[1]) for cells in (line.strip("| ").split(" | ") for line in body)] == [
        (script.ROWS[name].label, masks) for name, masks in expected
    ]
    assert all(line.count("±") == 6 for line in body)


def test_method_and_train_overrides_reach_every_trained_row_and_bad_ones_are_one_line(capsys):
    import pytest

    script = load_script("benchmarks/relation_eval.py")
    args = script.parse_args(["--method", '{"lambda_mask": 5}', "--train", '{"sigma_sampling": "shifted"}'])
    method = script.row_method(args, script.ROWS["relation-on-v"])
    assert (method.lambda_mask, method.relation_placement) == (5, "v")  # the row's own fields stay
    assert args.train == {"sigma_sampling": "shifted"}
    with pytest.raises(SystemExit):
        script.parse_args(["--method", '{"lambda_mask": -1}'])
    assert capsys.readouterr().err.strip().endswith("--method / --train: lambda_mask: must be at least 0, got -1")


def test_the_defaults_train_as_the_apps_quick_preset_and_report_the_papers_recipe_beside_it(tmp_path):
    from dreamrelation.config import MethodConfig
    from dreamrelation.presets import preset_run

    script = load_script("benchmarks/relation_eval.py")
    args = script.parse_args([])
    quick = preset_run("quick", {"data": {"data_dir": str(tmp_path)}})
    assert (args.steps, args.lr) == (quick.train.steps, quick.train.learning_rate)
    assert script.row_method(args, script.ROWS["dreamrelation"]) == quick.method
    assert script.row_method(args, script.ROWS["paper"]) == MethodConfig()
    assert args.rows == ["base", "direct-lora", "dreamrelation", "paper"] and args.seeds == 3
    assert (args.exemplars, args.exemplar_pairs) == (12, 4)
    # An ablation is the recipe with one part off.
    assert script.row_method(args, script.ROWS["no-contrastive"]) == quick.method.model_copy(update={"contrastive": False})
