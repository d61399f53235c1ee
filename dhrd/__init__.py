"""The `dhrd` console command: a thin dispatcher over the training and serving sides (see `dhrd.cli`)."""
