"""The edge every stage shares: logging, environment, and turning a
PipelineError into its message and exit status instead of a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from pipeline import paths
from pipeline.errors import PipelineError


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--params", default=str(paths.PARAMS_FILE), help="params file (default: %(default)s)"
    )
    return parser


def run_stage(
    main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None
) -> None:
    """Run a stage's main(); exit 1 (or 2 for bad params) with one line per problem."""
    # The pipeline makes no network call but the data fetch: MLflow's telemetry
    # stays off in our processes unless the user decided otherwise.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        main(argv)
    except PipelineError as err:
        for line in err.lines:
            print(line, file=sys.stderr)
        sys.exit(err.exit_code)
