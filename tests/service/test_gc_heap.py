"""The collector in a serving process: the start-up heap is frozen once the service is ready (and thawed
at close), so oldest-generation collections stop walking it; collections and their pauses are metrics."""
from __future__ import annotations

import asyncio
import gc
import time

from service.gc_heap import GcWatch, freeze_startup_heap
from service.metrics import Metrics
from service.settings import Settings

from .conftest import FakeRunner, serving


def sample(metrics: Metrics, name: str, generation: int) -> float:
    return metrics.registry.get_sample_value(name, {"generation": str(generation)}) or 0.0


def test_a_ready_service_has_frozen_its_startup_heap_and_thaws_it_at_close():
    counts = {}

    async def go(freeze: bool):
        async with serving(Settings(models={}, gc_freeze=freeze), {"fake": FakeRunner()}) as client:
            counts[freeze] = gc.get_freeze_count()
            assert (await client.post("/classify", json={"model": "fake", "input": "say yes"})).status_code == 200

    asyncio.run(go(True))
    assert gc.get_freeze_count() == 0  # closed: the next app in this process starts from a plain heap
    asyncio.run(go(False))
    assert counts[True] > 10_000 and counts[False] == 0  # torch, transformers, FastAPI: far more than this


def test_a_frozen_heap_makes_a_full_collection_cheaper():
    """Why freezing pays: a full collection walks every tracked object, garbage or not."""
    long_lived = [{"i": i} for i in range(300_000)]  # stands in for the models' and libraries' objects

    def full_collection() -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            gc.collect()
            best = min(best, time.perf_counter() - started)
        return best

    try:
        walked = full_collection()
        freeze_startup_heap()
        frozen = full_collection()
    finally:
        gc.unfreeze()
    assert frozen < walked / 3, (frozen, walked)
    del long_lived


def test_collections_and_their_pauses_reach_the_metrics_on_flush():
    async def go():
        metrics = Metrics()
        watch = GcWatch(metrics, freeze=False, interval=3600)
        watch.start()
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
        assert sample(metrics, "dhrd_gc_collections_total", 2) == 0  # counted, not yet flushed
        watch.flush()
        after_flush = sample(metrics, "dhrd_gc_collections_total", 2)
        gc.collect(2)
        watch.close()  # flushes what is left and stops counting
        gc.collect(2)
        return metrics, after_flush

    metrics, after_flush = asyncio.run(go())
    assert after_flush >= 2 and sample(metrics, "dhrd_gc_collections_total", 2) == after_flush + 1
    assert sample(metrics, "dhrd_gc_collections_total", 0) >= 1
    assert sample(metrics, "dhrd_gc_pause_seconds_total", 2) > 0
    assert GcWatch(Metrics(), freeze=False).summary().startswith("gen 0: 0 collections")
