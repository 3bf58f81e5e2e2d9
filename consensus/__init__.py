"""pouwnet consensus."""
