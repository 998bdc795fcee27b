"""The engine: variants, their queues and device workers, driven from the API, a test or a benchmark alike; it knows
nothing of transports.

``engine`` is the facade; ``gate`` routes, refuses while draining and counts requests inside (shared with the
multi-process engine client); ``scheduler/`` batches and runs; ``models/`` knows checkpoints, loading and the
repository; ``backends/`` are the ways a checkpoint runs; ``traffic/`` splits and shadows; ``tokenization`` encodes
pairs; ``status`` and ``errors`` are what the engine answers and raises.
"""
