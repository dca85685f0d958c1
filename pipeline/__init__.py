"""DVC pipeline: does BatchNorm help a deep, narrow MLP learn MNIST, and why?

One module per stage (`python -m pipeline.<stage>`), plus small shared modules.
Importing the package does no work.
"""
