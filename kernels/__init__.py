"""pouwnet kernels."""
