"""Registered on import; see docs/CONTRACTS.md for what lives here."""
