"""Client-side libraries: the JSON-RPC client, the compute-market client and the dataset client."""
