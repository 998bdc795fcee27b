"""The Open Inference Protocol (KServe v2, as spoken by Triton and MLServer) over the prediction service: its
schemas, the parsing of its requests and the rendering of its answers. The routes are in ``app.api.routes``."""
