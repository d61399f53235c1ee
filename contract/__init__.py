"""The contract between training and serving: everything an export *means*.

`training/` and `service/` both import this package and never each other (tests/test_architecture.py
checks it). Modules, each one idea:

- `contract.tasks`: task declarations and templates (SuperGLUE, extra, FLAN, custom JSON tasks).
- `contract.text`: the text conventions around an input (training suffix, answer parsing, CoT prompt).
- `contract.encoding`: input text → token ids (truncation) and tokenizer padding conventions.
- `contract.model`: padding, pooling, `ClassifierHead`, `PooledClassifier` (torch).
- `contract.manifest`: the export layout, `Manifest`, its versions and file hashing.
- `contract.export_reader`: `read_manifest`, `check_files`, `load_export`.
- `contract.data`: reading a task's splits (JSONL, FLAN TSV, held-out parts) into `Example`s.
- `contract.metrics`: a task's official metrics and the checkpoint-picking `score`.

Pure-Python modules (tasks, text, encoding, manifest, data, metrics) import no torch, so a load-test client can
format task inputs without it. Any change to what this package computes must bump
`manifest.CONTRACT_VERSION`.
"""
