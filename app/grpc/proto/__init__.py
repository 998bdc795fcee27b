"""Code generated from ``open_inference.proto`` by ``make proto``: do not edit the ``*_pb2*`` files by hand."""
