"""Benchmark: the classic DataLoader loop against the project's training loop.

`python -m pipeline.bench` times, in one process, whole epochs (training pass
plus the test-set pass) of
  baseline: torchvision MNIST with ToTensor through a shuffling DataLoader,
            Adam with its defaults, as tutorials (and the seed post) write it;
  project:  the dataset resident on the device, seeded permutations, the
            hand-written backward pass (pipeline/nn/backprop.py), fused Adam,
            per-layer diagnostics (pipeline/nn/training.py);
  project with autograd's backward instead, to measure what backprop.py saves;
  project without diagnostics, to measure what the diagnostics cost;
  project with --seeds seeds stacked (default: as many as train.seeds), the
            train stage's epoch, to set against one seed's;
  on CUDA, the project loop with its step in a CUDA graph (train.cuda_graph),
            for one seed and for the stacked seeds;
interleaved (A B C A B C ...), with the same model and batch size. The
project loops train one seed (a stack of one) unless said otherwise. Each
loop runs at its best thread count on a CPU: one thread for the one-seed
loops (two only add synchronisation to such small layers), and for the
stacked seeds what train.cpu_threads gives the train stage.
Then the price of one training step of the stacked seeds, as the train
stage pays it (diagnostics on, its thread count, its epoch loop), for both
variants at several batch sizes (--step-batch-sizes, and train.batch_size),
`--steps` steps per round, rounds interleaved.
It prints each epoch and round, the medians and ratios; the last line is JSON.
"""

from __future__ import annotations

import functools
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from pipeline import paths
from pipeline.cli import run_stage, stage_parser
from pipeline.data.mnist import load_mnist, to_device
from pipeline.nn.cuda_graph import CudaGraphStep
from pipeline.nn.device import configure_threads, select_device
from pipeline.nn.model import VARIANTS, DeepMLP, StackedMLP
from pipeline.nn.training import (
    batch_starts,
    evaluate,
    initial_model,
    make_optimizer,
    train_epoch,
    training_step,
)
from pipeline.params import load_params

log = logging.getLogger("bench")


def classic_epoch(
    model: DeepMLP,
    optimizer: torch.optim.Optimizer,
    train_loader,
    test_loader,
    device: torch.device,
) -> None:
    """The loop as commonly written: batches from a DataLoader, moved per step."""
    model.train()
    for images, labels in train_loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in test_loader:
            images, labels = images.to(device), labels.to(device)
            correct += (model(images).argmax(1) == labels).sum().item()


def compare(times: dict[str, list[float]]) -> dict[str, float]:
    """Medians per loop, the speedup of the project loop, what its hand-written
    backward gains over autograd's, the diagnostics' cost, and what the
    stacked seeds' epoch costs against one seed's."""
    names = ("baseline", "project", "project_autograd", "project_no_diagnostics", "project_seeds")
    baseline, project, autograd, bare, seeds = (statistics.median(times[name]) for name in names)
    result = {
        "baseline_epoch_s": round(baseline, 3),
        "project_epoch_s": round(project, 3),
        "project_autograd_epoch_s": round(autograd, 3),
        "project_no_diagnostics_epoch_s": round(bare, 3),
        "project_seeds_epoch_s": round(seeds, 3),
        "speedup": round(baseline / project, 2),
        "manual_backward_speedup": round(autograd / project, 2),
        "diagnostics_overhead": round(project / bare - 1, 3),
        "seeds_ratio": round(seeds / project, 2),
    }
    if "project_cuda_graph" in times:
        graph = statistics.median(times["project_cuda_graph"])
        graph_seeds = statistics.median(times["project_seeds_cuda_graph"])
        result["cuda_graph_epoch_s"] = round(graph, 3)
        result["cuda_graph_speedup"] = round(baseline / graph, 2)
        result["cuda_graph_seeds_epoch_s"] = round(graph_seeds, 3)
        result["cuda_graph_seeds_ratio"] = round(graph_seeds / graph, 2)
    return result


def step_prices(times: dict[tuple[str, int], list[float]], batch_size: int) -> dict:
    """Median milliseconds per step by variant and batch size, from each
    round's seconds per step, and BatchNorm's step over the other's at
    `batch_size` (the train stage's)."""
    ms = {key: round(1000 * statistics.median(rounds), 3) for key, rounds in times.items()}
    result = {
        "stacked_step_ms": {
            variant: {str(batch): value for (v, batch), value in ms.items() if v == variant}
            for variant in VARIANTS
        }
    }
    result["bn_over_nobn"] = round(ms["bn", batch_size] / ms["nobn", batch_size], 3)
    return result


def timed(run: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default: train.device from params")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="bn")
    parser.add_argument("--repeats", type=int, default=5, help="epochs per loop (default 5)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds in the stacked loop (default: len(train.seeds))")  # fmt: skip
    parser.add_argument("--step-batch-sizes", type=int, nargs="+", default=[16, 64],
                        help="batch sizes of the step prices (default 16 64; "
                             "train.batch_size is always one)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=100,
                        help="training steps per round of the step prices (default 100)")  # fmt: skip
    args = parser.parse_args(argv)
    params = load_params(args.params)
    seeds = args.seeds or len(params.train.seeds)
    device = select_device(args.device or params.train.device)
    configure_threads(params.train.cpu_threads)
    seeds_threads = torch.get_num_threads()  # the train stage's setting
    one_seed_threads = 1 if device.type == "cpu" else seeds_threads
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    batch_size, depth, width = params.train.batch_size, params.model.depth, params.model.width
    to_tensor = transforms.ToTensor()
    train_set = datasets.MNIST(str(paths.RAW_DIR), train=True, transform=to_tensor)
    test_set = datasets.MNIST(str(paths.RAW_DIR), train=False, transform=to_tensor)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=batch_size)
    data = to_device(load_mnist(paths.RAW_DIR), device)
    t = params.train
    batchnorm = VARIANTS[args.variant]

    def classic_model() -> tuple[DeepMLP, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = DeepMLP(depth, width, batchnorm).to(device)
        return model, torch.optim.Adam(model.parameters(), lr=t.lr)

    def training_pass(
        batchnorm: bool,
        count: int,
        batch: int,
        images: int | None = None,
        diagnostics: bool = True,
        graph: bool = False,
        use_autograd: bool = False,
    ) -> tuple[StackedMLP, Callable[[], None]]:
        """A training pass as the train stage runs it (its epoch loop), for
        `count` stacked seeds in batches of `batch`, over the first `images`
        training images (default all); without its diagnostics, with a CUDA
        graph, or with autograd's backward if asked. Returns the model and the pass."""
        model = initial_model(depth, width, batchnorm, list(range(count))).to(device)
        optimizer = make_optimizer(model, t.lr, t.betas, t.eps, t.weight_decay, graph)
        x, y = data.train_x[:images], data.train_y[:images]
        step = training_step(model, optimizer, x, y, diagnostics, use_autograd)
        graphed = CudaGraphStep(step, model, optimizer, batch, device) if graph else None
        generators = [torch.Generator().manual_seed(seed) for seed in range(count)]
        return model, functools.partial(train_epoch, model, step, x, batch, generators, None,
                                        graphed)  # fmt: skip

    def project_loop(
        diagnostics: bool = True, graph: bool = False, use_autograd: bool = False, count: int = 1
    ) -> Callable[[], None]:
        """An epoch as the train stage runs it, for `count` stacked seeds (or
        without its diagnostics, or with autograd's backward)."""
        model, train = training_pass(batchnorm, count, batch_size, None,
                                     diagnostics, graph, use_autograd)  # fmt: skip

        def epoch() -> None:
            train()
            if diagnostics:
                evaluate(model, data.test_x, data.test_y)
            else:
                with torch.no_grad():
                    (model.eval()(data.test_x).argmax(2) == data.test_y).float().mean().item()

        return epoch

    def stacked_steps(batchnorm: bool, batch: int) -> tuple[Callable[[], None], int]:
        """`--steps` training steps of the stacked seeds as the train stage
        takes them (diagnostics on; a CUDA graph on CUDA), and how many steps."""
        images = min(batch * args.steps, len(data.train_x))
        _, train = training_pass(batchnorm, seeds, batch, images, graph=device.type == "cuda")
        return train, len(batch_starts(images, batch))

    base_model, base_opt = classic_model()
    loops = {
        "baseline": lambda: classic_epoch(base_model, base_opt, train_loader, test_loader, device),
        "project": project_loop(),
        "project_autograd": project_loop(use_autograd=True),
        "project_no_diagnostics": project_loop(diagnostics=False),
        "project_seeds": project_loop(count=seeds),
    }
    if device.type == "cuda":  # the train stage's default there: train.cuda_graph auto
        loops["project_cuda_graph"] = project_loop(graph=True)
        loops["project_seeds_cuda_graph"] = project_loop(graph=True, count=seeds)
    times: dict[str, list[float]] = {name: [] for name in loops}
    threads = {name: seeds_threads if "seeds" in name else one_seed_threads for name in loops}
    log.info("device %s, %s model, batch %d, threads %s", device, args.variant, batch_size,
             threads)  # fmt: skip
    for round_number in range(1, args.repeats + 1):
        for name, loop in loops.items():
            torch.set_num_threads(threads[name])
            times[name].append(timed(loop, device))
            log.info("round %d %-24s %.2f s", round_number, name, times[name][-1])
    torch.set_num_threads(seeds_threads)
    step_batches = sorted(set(args.step_batch_sizes) | {batch_size})
    step_loops = {
        (variant, batch): stacked_steps(VARIANTS[variant], batch)
        for batch in step_batches
        for variant in VARIANTS
    }
    step_times: dict[tuple[str, int], list[float]] = {key: [] for key in step_loops}
    for round_number in range(1, args.repeats + 1):
        for (variant, batch), (loop, steps) in step_loops.items():
            step_times[variant, batch].append(timed(loop, device) / steps)
            log.info("round %d %s step, batch %d: %.3f ms", round_number, variant, batch,
                     1000 * step_times[variant, batch][-1])  # fmt: skip
    result = (
        {
            "device": str(device),
            "variant": args.variant,
            "batch_size": batch_size,
            "threads_one_seed": one_seed_threads,
            "threads_seeds": seeds_threads,
            "seeds": seeds,
            "repeats": args.repeats,
        }
        | compare(times)
        | step_prices(step_times, batch_size)
    )
    baseline, project_s = result["baseline_epoch_s"], result["project_epoch_s"]
    print(f"baseline (DataLoader) median {baseline:.2f} s/epoch")
    print(f"project loop          median {project_s:.2f} s/epoch  speedup x{result['speedup']}")
    print(f"autograd backward     median {result['project_autograd_epoch_s']:.2f} s/epoch  "
          f"hand-written is x{result['manual_backward_speedup']} faster")  # fmt: skip
    print(f"diagnostics overhead  {100 * result['diagnostics_overhead']:+.1f}%")
    print(f"{seeds} stacked seeds       median {result['project_seeds_epoch_s']:.2f} s/epoch  "
          f"x{result['seeds_ratio']} one seed's epoch")  # fmt: skip
    for variant, prices in result["stacked_step_ms"].items():
        listed = ", ".join(f"batch {batch} {ms:.2f} ms" for batch, ms in prices.items())
        print(f"{seeds} stacked seeds' step, {variant}: {listed}")
    print(f"BatchNorm's step / the other's at batch {batch_size}: x{result['bn_over_nobn']}")
    if "cuda_graph_epoch_s" in result:
        print(f"CUDA graph loop       median {result['cuda_graph_epoch_s']:.2f} s/epoch  "
              f"speedup x{result['cuda_graph_speedup']}")  # fmt: skip
        print(f"CUDA graph, {seeds} seeds  median {result['cuda_graph_seeds_epoch_s']:.2f} "
              f"s/epoch  x{result['cuda_graph_seeds_ratio']} one seed's epoch")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    run_stage(main)
