"""The engine: what a served model is to a handler (`served.ServedModel`), request items to token ids
(`encoder`), the CoT prompt, the dynamic batcher, the engine core and its one torch thread, and the
engine process with its client and socket messages. No HTTP; its device work is the device room's."""
