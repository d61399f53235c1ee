"""Forward passes alone, without HTTP or a client: the ceiling the service's overheads come off.
One tool, `python -m loadtest.forward MODE` (see __main__.py): `profile` (passes.py: a request's stages and
the forward pass per batch size), `packing` (packed against padded passes on a task's own inputs),
`attention` (the CPU attention kernels of a packed pass) and `roofline` (matmul GFLOP/s ÷ FLOPs per sequence)."""
