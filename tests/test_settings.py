"""Settings that mean the same in every front-end: rank -> alpha."""

from dreamrelation import cli
from dreamrelation.config import MethodConfig, ModelConfig, RunConfig
from dreamrelation.method.adapters import adapter_specs
from dreamrelation.studio.training import build_run


def cli_run(*argv: str) -> RunConfig:
    return cli.build_run_config(cli.build_parser().parse_args(["train", *argv]))


# --- rank -> alpha ----------------------------------------------------------------------------------------


def test_alpha_follows_the_rank_unless_set():
    assert MethodConfig().alpha == 16.0  # the paper's rank 16, alpha 16
    assert MethodConfig(rank=8).alpha == 8.0
    assert MethodConfig(rank=8, alpha=3).alpha == 3.0
    method = MethodConfig(rank=4, ffn_rank=2)
    assert method.resolved_ffn_alpha == 4.0  # the ffn adapter keeps the relation adapter's alpha
    assert {spec.name: (spec.rank, spec.alpha) for spec in adapter_specs(method)} == {
        "relation": (4, 4.0), "subject1": (4, 4.0), "subject2": (4, 4.0), "ffn": (2, 4.0)}


def test_the_cli_and_the_app_give_a_rank_the_same_alpha(tmp_path):
    cli_method = cli_run("--data", str(tmp_path), "--rank", "4").method
    app_method = build_run(ModelConfig(), tmp_path, "paper", {"rank": 4}).method
    assert cli_method == app_method and app_method.alpha == 4.0
    assert cli_run("--data", str(tmp_path), "--rank", "4", "--alpha", "16").method.alpha == 16.0
