"""DreamRelation Studio web app: upload relation videos → masks → background training → generation.

    python app.py [--model toy] [--home DIR] [--auth user:password] [--mcp] [--gpus 0,1] [--cluster ADDRESS]

Serves on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (127.0.0.1:7860 by default; Spaces sets both), keeps its
data under --home (DREAMRELATION_HOME, else /data/dreamrelation on a Space with storage, else ./data) and
generates with --model (DREAMRELATION_MODEL, else the embedded toy model). The API page lists the named
endpoints gradio_client calls; --mcp serves the same endpoints to MCP clients. Training jobs run on this
machine's GPUs (--gpus), or on a Ray cluster (--cluster); the flags below each have an environment variable.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from pydantic import ValidationError

from dreamrelation.config import STUDIO_ENV, IngestConfig, ModelConfig, StudioConfig, describe_validation_error
from dreamrelation.jobs import ExecutorError
from dreamrelation.studio import Studio, default_home
from ui.layout import build_demo



def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("DREAMRELATION_MODEL") or ModelConfig.model_fields["name"].default,
                        help=ModelConfig.model_fields["name"].description)
    parser.add_argument("--home", type=Path, default=None, help="Data directory (default: see above).")
    parser.add_argument("--auth", help="'user:password' to require a login (self-hosting).")
    parser.add_argument("--mcp", action="store_true", help="Also serve the endpoints as an MCP server.")
    for name, variable in STUDIO_ENV.items():
        field = StudioConfig.model_fields[name]
        parser.add_argument(f"--{name.replace('_', '-')}", default=os.environ.get(variable) or field.default,
                            help=f"{field.description} (${variable})")
    return parser.parse_args(argv)


def studio_settings(args: argparse.Namespace) -> StudioConfig:
    """The StudioConfig of the parsed flags; exits with one line for a bad value."""
    try:
        return StudioConfig(**{name: getattr(args, name) for name in STUDIO_ENV})
    except ValidationError as error:
        raise SystemExit(f"app.py: {describe_validation_error(error)}") from None


def main(argv=None) -> None:
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("dreamrelation").addHandler(handler)
    logging.getLogger("dreamrelation").setLevel(logging.INFO)
    home = args.home or default_home()
    try:
        studio = Studio(home, ModelConfig(name=args.model), settings=studio_settings(args))
    except ExecutorError as error:  # a cluster out of reach, or one that cannot see the home
        raise SystemExit(f"app.py: {error}") from None
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    build_demo(studio).queue(default_concurrency_limit=4).launch(
        auth=auth,
        max_file_size=int(IngestConfig().max_file_mb * 1e6),  # per file, in bytes, as ingestion counts them
        # Nothing under the data folder is served by path (the job table, logs, other owners' files):
        # callbacks hand out copies in gradio's cache, and file inputs must be this session's uploads.
        blocked_paths=[str(studio.workspace.home)],
        mcp_server=args.mcp,
        theme="soft",
        show_error=True,
    )


if __name__ == "__main__":
    main()
