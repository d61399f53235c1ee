"""DHRD serving: exported pooled classifiers behind FastAPI (backbone + head only, never an LM head)."""
