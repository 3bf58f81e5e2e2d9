"""Applications built on the client libraries: network and dataset training."""
