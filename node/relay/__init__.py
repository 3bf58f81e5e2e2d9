"""Relay and sync over the peer network.

Headers-first sync, compact blocks, transaction relay and blob exchange.
"""
