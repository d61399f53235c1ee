"""The device: the only code that runs torch. The pooled classifier's forward passes (`runner`), their
CUDA graphs (`graphs`) and the CoT baseline's decoding (`generator`)."""
