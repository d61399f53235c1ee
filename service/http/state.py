"""The app's lifespan objects: served models (encoder + queue to the forward pass), settings, metrics,
readiness. The forward pass runs in this process (`EngineCore`, `--workers 0`) or in the engine
process (`EngineClient`, `--workers N`)."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..engine.client import EngineClient, RemoteQueue
from ..engine.core import EngineCore, find_model
from ..engine.encoder import InputEncoder
from ..engine.served import ServedModel
from ..errors import EngineDead, NotReady, ShuttingDown
from ..gc_heap import GcWatch
from ..metrics import Metrics
from ..settings import Settings

if TYPE_CHECKING:  # the HTTP edge names the device's runner in hints only; the engine loads it
    from ..device.runner import ModelRunner

log = logging.getLogger("dhrd.service")
LIVENESS_STALLS = 3  # /health fails once a stall has lasted this many --stall-timeout-s


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    engine: EngineCore | None = None  # in-process forward passes
    client: EngineClient | None = None  # or the engine process's socket
    gc: GcWatch | None = None  # from ready to close

    def check(self) -> None:
        """Readiness, the one truth behind /ready, /v1/models and work: raises ShuttingDown while draining
        or once the engine process is gone, NotReady while loading (or after loading failed)."""
        if self.draining:
            raise ShuttingDown("the service is shutting down; retry on another replica")
        if self.engine_dead:
            raise ShuttingDown("the engine is gone (its device failed); the service is stopping")
        if self.client is not None and not self.client.alive:
            raise ShuttingDown("the engine process is gone; retry on another replica")
        if not self.ready:
            raise NotReady(self.load_error or "models are still loading; retry when GET /ready answers 200")
        stuck = self.stuck()
        if stuck:
            raise NotReady(stuck[0])

    def stuck(self) -> tuple[str, float] | None:
        """Why a loaded service cannot serve now and for how long, or None: a model with work and no forward
        pass finishing, or an engine process that stopped answering its heartbeat. /ready answers 503 at
        once (a load balancer moves traffic); /health only once it has lasted LIVENESS_STALLS stall
        timeouts, so a liveness probe restarts a replica that stays stuck (DEPLOY.md). Clears once passes
        finish again."""
        limit = self.settings.stall_timeout_s
        if self.engine is not None:
            return self.engine.stalled(limit)
        if self.client is not None:
            silent = self.client.silent_for()
            if silent > limit:
                return f"the engine process has not answered for {silent:.0f} s; it may be stuck", silent
            return self.client.engine_stalled
        return None

    def check_alive(self) -> None:
        """Liveness (/health): raises EngineDead once the service has been stuck for LIVENESS_STALLS stall
        timeouts; a replica that stays stuck is better restarted than kept out of rotation forever."""
        stuck = self.stuck()
        if stuck and stuck[1] > LIVENESS_STALLS * self.settings.stall_timeout_s:
            raise EngineDead(f"{stuck[0]}; stuck for {stuck[1]:.0f} s: restart the replica")

    def model(self, name: str) -> ServedModel:
        """The served model called `name`; raises as `check` does, and UnknownModel for other names (the
        lookup the engine process shares: `engine.find_model`)."""
        self.check()
        return find_model(self.models, name, self.ready, self.load_error)

    @property
    def serving(self) -> bool:
        """Ready, its in-process engine alive, and (with an engine process) still connected to it."""
        return self.ready and not self.engine_dead and (self.client is None or self.client.alive)

    @property
    def engine_dead(self) -> bool:
        """The in-process engine hit a fatal device error: the server must stop, non-zero (server.py)."""
        return self.engine is not None and self.engine.dead is not None

    async def load(self, runners: dict[str, ModelRunner] | None = None, verify_hashes: bool = True,
                   engine_socket: str | Path | None = None) -> None:
        """Load and warm up every model (here, or wait for the engine process); then mark ready."""
        try:
            if engine_socket is None:
                await self._load_here(runners, verify_hashes)
            else:
                await self._connect(engine_socket)
        except Exception as exc:  # reported by /ready; the process stays up to say why
            self.load_error = self.load_error or f"loading failed: {exc}"
            log.exception("model loading failed")
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: %s", ", ".join(self.models))
        self.gc = GcWatch(self.metrics, freeze=self.settings.gc_freeze)
        self.gc.start()

    async def _load_here(self, runners: dict[str, ModelRunner] | None, verify_hashes: bool) -> None:
        self.engine = EngineCore(self.settings, self.metrics)
        await self.engine.load(runners, verify_hashes)
        for name, m in self.engine.models.items():
            self.models[name] = ServedModel(name, m.encoder, m.batcher, m.cot_prompt, m.cot_batcher)

    async def _connect(self, engine_socket: str | Path) -> None:
        """Front-end process: tokenizers and manifests here, weights and forward passes in the engine."""
        from ..engine.cot_prompt import CotPrompt

        s = self.settings
        loop = asyncio.get_running_loop()
        self.client = EngineClient(engine_socket, heartbeat_s=min(1.0, s.stall_timeout_s / 5))
        await self.client.connect()
        for name, path in s.models.items():
            encoder = await loop.run_in_executor(None, InputEncoder.from_export, path)
            cot = await loop.run_in_executor(None, CotPrompt, name, encoder.manifest) if s.cot else None
            self.models[name] = ServedModel(name, encoder, RemoteQueue(self.client, name, "classify", s.max_queue), cot,
                                            RemoteQueue(self.client, name, "cot", s.max_queue) if s.cot else None)
        while True:  # the engine loads and warms up the weights; /ready says 503 meanwhile
            ready, error = await self.client.status()
            if ready:
                return
            if error:
                self.load_error = error
                raise RuntimeError(error)
            await asyncio.sleep(0.1)

    def queues(self) -> list:
        return [q for s in self.models.values() for q in (s.batcher, s.cot_batcher) if q is not None]

    async def drain(self) -> None:
        """SIGTERM: fail readiness (a load balancer stops sending), refuse new work, let queued work finish
        within the grace period, answer what is left 503."""
        self.draining = True
        self.metrics.ready.set(0)
        failed = await asyncio.gather(*(q.drain(self.settings.grace_s) for q in self.queues()))
        log.info("drained: %d queued sequence(s) answered 503 after the %.0f s grace period", sum(failed),
                 self.settings.grace_s)

    async def close(self) -> None:
        if self.gc is not None:
            self.gc.close()
        for queue in self.queues():
            await queue.stop()
        if self.engine is not None:
            await self.engine.close()
        if self.client is not None:
            await self.client.close()
