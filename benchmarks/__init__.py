"""pouwnet benchmarks."""
