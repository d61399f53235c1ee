"""Load tests of the DHRD service: scenarios, the runner, and the compute ceiling they are measured against."""
from pathlib import Path

# The checkout (an editable install): the locustfile, the peer's venv and the results folder live there.
REPO = Path(__file__).resolve().parents[1]
