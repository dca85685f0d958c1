"""The network and its training: the MLP (one seed or several stacked), its
hand-written backward pass, the training loop and its diagnostics, the CUDA
graph step, device choice, checkpoints and per-epoch histories."""
