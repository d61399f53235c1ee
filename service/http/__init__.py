"""The HTTP edge: the FastAPI app and its thin routes, request validation and the fast path, schemas, the
mapping of the error vocabulary to HTTP, middleware, the guarded uvicorn protocol and server, and the
lifespan objects (`state.AppState`). It reaches the forward pass only through the engine room."""
