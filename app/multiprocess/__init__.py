"""Several HTTP front-end processes feeding one engine process over ZeroMQ (``XNLI_SERVE_FRONTEND_PROCESSES`` > 1).

One Python process cannot parse, validate and answer as many single-pair HTTP requests per second as a GPU computes
pairs. With N > 1, ``xnli-serve serve`` becomes a supervisor (:mod:`app.multiprocess.supervisor`) that starts:

* one engine process (:mod:`.engine_process`): the ``Engine`` with its models, queues and device workers,
  answering requests that arrive on a ZeroMQ ROUTER socket and publishing its state (readiness, variants) on a PUB
  socket; it is the one source of engine metrics;
* N front-end processes (:mod:`app.multiprocess.front_end`) sharing the listening socket, each running the unchanged
  FastAPI app around an :class:`app.multiprocess.engine_client.EngineClient`, which stands in for the engine.

Messages are typed (:mod:`app.multiprocess.channel`: the engine's own ``EngineRequest`` and ``EngineResult`` among
them) and framed as msgpack with a protocol version (:mod:`app.multiprocess.wire`); the sockets are Unix-domain
(``ipc://``) in a private folder.
"""
