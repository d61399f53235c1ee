"""`python -m loadtest.gpu --plan | --call N ...`: see loadtest/gpu/__init__.py."""
from loadtest.gpu.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
