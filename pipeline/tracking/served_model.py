"""The MLflow model a train stage logs: one seed's network that loads and
predicts digits on any machine, with or without CUDA.

This module is an MLflow flavor of our own (as MLflow's are: `save_model`
writes a model, `_load_pyfunc` loads one). The model it writes has two:

- `pytorch`: the network as MLflow's pt2 format (torch.export), so
  `mlflow.pytorch.load_model(uri)` returns it, logits out, on the CPU.
- `python_function`: `mlflow.pyfunc.load_model(uri).predict(x)` and
  `mlflow models serve` map images, float32 (N, 784) in [0, 1], to digits.
  Its loader is this file, copied into the model (`code/served_model.py`),
  so the model needs torch and MLflow but not this project.

Why not MLflow's own pyfunc for pytorch: it moves the model to CUDA when
CUDA is available, and a pt2 program cannot move off the device it was
exported on (always the CPU here: the train stage exports the network it
loads from the checkpoint, which holds CPU weights), so it fails on every
GPU machine. This loader never asks for a device: the program runs where
it was exported, whatever the machine has. (Pickled models could move, but MLflow refuses to load
them without MLFLOW_ALLOW_PICKLE_DESERIALIZATION.)

No import from `pipeline` here: the copy inside the model must stand alone.
"""

from __future__ import annotations

import os
from typing import Any

LOADER = "served_model"  # this file's name inside the model's code/ folder


def save_model(
    path: str,
    mlflow_model: Any,
    network: Any,
    input_example: Any,
    pip_requirements: list[str],
    **_: Any,  # what Model.log passes on (validate_serving_input, ...)
) -> None:
    """Write `network` (a torch module on the CPU, in eval mode) as an MLflow
    model at `path`: the pt2 pytorch flavor, and a pyfunc flavor that
    predicts digits. `input_example`: float32 images (N, 784)."""
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.pyfunc import add_to_model
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, input_example.shape[1]))]),
        outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]),
    )
    mlflow.pytorch.save_model(
        network,
        path,
        mlflow_model=mlflow_model,
        serialization_format="pt2",
        input_example=input_example,
        signature=signature,
        pip_requirements=pip_requirements,
        code_paths=[__file__],
    )
    flavor = mlflow_model.flavors["python_function"]
    add_to_model(
        mlflow_model,
        loader_module=LOADER,
        data=".",  # the whole model folder: _load_pyfunc loads it as mlflow.pytorch does
        code=flavor["code"],
        conda_env=flavor["env"]["conda"],
        python_env=flavor["env"]["virtualenv"],
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))


class DigitClassifier:
    """The pyfunc model: images (N, 784) in [0, 1] -> predicted digits (N,)."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        import numpy as np
        import torch

        images = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        with torch.no_grad():
            return self.network(images).argmax(dim=1).numpy()


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> DigitClassifier:
    """pyfunc's entry point; `path` is the model folder."""
    import mlflow.pytorch

    return DigitClassifier(mlflow.pytorch.load_model(path))
