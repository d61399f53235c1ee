"""`python -m loadtest.bench`: the performance report of BENCHMARKS.md (see run.py, `--help`)."""
import sys

from loadtest.bench.run import main

if __name__ == "__main__":
    sys.exit(main())
