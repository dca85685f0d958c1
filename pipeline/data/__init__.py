"""The data: MNIST's four IDX files, where they come from (torchvision's
mirrors, a PyPI package, a local folder), their digests, and loading them."""
