"""pouwnet node."""
