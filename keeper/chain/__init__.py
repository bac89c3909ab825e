"""The chain side: JSON-RPC client, new heads, revert decoding, keys and signers, the
deployment file and the start-up checks of the chain and contracts."""
