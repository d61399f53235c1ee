"""The front end's ceiling: a pure ASGI app answering every request with a fixed /classify-shaped JSON,
run by the same uvicorn (httptools + uvloop, one process) as `dhrd serve`. `python -m loadtest.null_server PORT`."""
from __future__ import annotations

import json
import sys

BODY = json.dumps({"id": "classify-0", "object": "list", "created": 0, "model": "cb", "data": [
    {"index": 0, "label": "entailment", "probs": [0.5, 0.25, 0.25], "num_classes": 3, "truncated": False}],
    "usage": {"prompt_tokens": 64, "total_tokens": 64, "completion_tokens": 0}}).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):  # read the request body, as a real handler must
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", http="httptools", loop="uvloop")
