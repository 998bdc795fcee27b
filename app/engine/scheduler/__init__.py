"""The batcher: requests and their pairs in priority lanes, admission, batch formation and padding, and the device
worker that runs every forward pass of one device in stages. Imports no particular backend: a backend hands the
worker its stages through ``Backend.stages``."""
