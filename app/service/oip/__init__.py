"""The Open Inference Protocol (KServe v2) without a wire: its request and response as plain typed data, tensors to a
prediction query and results to tensors. HTTP (``app.api.oip``) and any other transport (gRPC's ModelInfer) only read
their wire into :class:`~app.service.oip.model.InferenceRequest` and write
:class:`~app.service.oip.model.InferenceResponse` out; what is malformed is an
:class:`~app.service.errors.InvalidInferenceRequest`, which each transport answers as it answers every kind."""
