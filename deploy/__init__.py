"""Production deployment helpers: Vault bootstrap and policies."""
