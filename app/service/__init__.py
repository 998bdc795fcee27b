"""Protocol-neutral services over the engine: what every transport (native REST, Open Inference Protocol, future
gRPC or in-process callers) shares. Nothing here imports Starlette or FastAPI."""
