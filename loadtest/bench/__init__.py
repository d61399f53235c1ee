"""The performance report of BENCHMARKS.md: `python -m loadtest.bench` (run.py) starts each scenario's server
(scenarios.py, servers), drives it with Locust (locustfile.py) over a sweep of concurrency levels
(measure.py), reads Locust's CSV and the service's counters (parsing.py), measures accuracy through the API
(accuracy.py), derives the headline numbers (summary.py) and writes the report (report.py)."""
