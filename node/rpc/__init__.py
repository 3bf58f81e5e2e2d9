"""The JSON-RPC server, its method groups and the JSON views of protocol objects."""
