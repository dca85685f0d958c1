"""DVC pipeline: does BatchNorm help a deep, narrow MLP learn MNIST, and why?

The stages and commands stand here, one module each (`python -m
pipeline.<stage>`), beside what every stage's edge shares (params, paths,
cli, files, errors). What they are built on lives in four packages: `nn`
(the network and its training), `data` (MNIST), `tracking` (MLflow) and
`report` (statistics, figures, reports). Importing any of it does no work.
"""
