"""The Open Inference Protocol (KServe v2, as spoken by Triton and MLServer) over HTTP: its JSON schemas, reading a
body (JSON or binary tensors) into the protocol's typed request, and writing its typed answers back. What the request
means and how tensors become pairs is transport-neutral, in ``app.service.oip``; the routes are in
``app.api.routes``."""
