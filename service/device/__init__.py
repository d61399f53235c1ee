"""The device: the only code that runs torch. The pooled classifier's forward passes (`runner`), their
CUDA graphs (`graphs`), the CoT baseline's decoding (`generator`) and the C heap under a CPU pass
(`cpu_heap`)."""
