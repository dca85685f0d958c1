"""`python -m pipeline.request`: MNIST test images as the body of a request
to a served model (`mlflow models serve`, README "Serve a trained model").

Prints {"inputs": [[784 floats in [0, 1]], ...]} - MLflow's scoring-server
form for a tensor input - for `--count` test images from `--start` to
stdout, and their true digits to stderr, so that

    python -m pipeline.request --count 10 > request.json

gives a body for `curl --data @request.json` and the answers to expect.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from pipeline import paths
from pipeline.cli import run_stage
from pipeline.data.mnist import load_split, scale_images
from pipeline.errors import PipelineError


def request_body(images: torch.Tensor) -> dict[str, list[list[float]]]:
    """uint8 images (N, 28, 28) as a scoring-server body, scaled as in training."""
    return {"inputs": scale_images(images).tolist()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=0, help="first test image (default 0)")
    parser.add_argument("--count", type=int, default=10, help="how many (default 10)")
    args = parser.parse_args(argv)
    images, labels = load_split(paths.RAW_DIR, train=False)
    if args.start < 0 or args.count < 1 or args.start + args.count > len(images):
        raise PipelineError(
            f"--start {args.start} --count {args.count}: the test set has images 0 to "
            f"{len(images) - 1}; choose a count of at least 1 that stays inside it"
        )
    chosen = slice(args.start, args.start + args.count)
    json.dump(request_body(images[chosen]), sys.stdout)
    sys.stdout.write("\n")
    print(f"true digits: {labels[chosen].tolist()}", file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
