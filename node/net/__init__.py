"""The peer-to-peer network.

The wire format, peer sessions, the peer manager, addresses, bans and the HTTP guard.
"""
