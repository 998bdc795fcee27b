"""The gRPC transport: the Open Inference Protocol (KServe v2, ``inference.GRPCInferenceService``) over the same
prediction service, engine, admission and metrics as HTTP. It parses, validates and calls ``app.service``; it
knows nothing of HTTP (``app.api``) and the engine knows nothing of it."""
