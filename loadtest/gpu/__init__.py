"""The GPU kit: the serving engine's numbers on one lent CUDA device, as two bounded calls of the device
`run` tool (each sends the checkout, runs one command of at most 10 minutes, and returns what it wrote
under $OUT).

    python -m loadtest.gpu --plan                   # the two run(...) calls, exactly as to be made
    python -m loadtest.gpu --call 1                 # SmolLM2-135M shape: ceiling, null server, /classify, CoT
    python -m loadtest.gpu --call 2                 # Llama-3.2-3B shape: ceiling, /classify
    python -m loadtest.gpu --call 1 --device cpu --shape tiny --quick   # the same stages on a CPU (the tests)

Each call is a fixed list of stages. Every stage has its own time budget and the call a total one
(--budget-s), enforced here: a stage whose budget no longer fits in what is left is recorded as
skipped with the reason and never started, every stage's subprocess runs under its budget, and a
watchdog ends the run if anything still overruns. The JSON report is rewritten after every stage
("complete": false until the end), so a run the device's time limit kills still returns what it
measured. The models are random-init exports of real shapes written directly on the device (speed does
not depend on the weights; training would cost device time and measure nothing about serving).

The package, by idea: plan.py (the two calls, their stages and budgets: what `--plan` prints), stages.py
(running stages under budgets, the watchdog, the report saved after each), export.py (the random-init
export of a real shape), ceiling.py (the forward pass alone), serving.py (`dhrd serve`, the null server
and the raw clients: /classify and CoT), report.py (the markdown report, the targets judged), cli.py (the
command and one call's run), deps.py with wheels.sh and run.sh (the wheels carried to the device and
their install there).
"""
