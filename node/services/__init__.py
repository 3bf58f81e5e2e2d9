"""Services a node runs besides the chain: the compute market."""
