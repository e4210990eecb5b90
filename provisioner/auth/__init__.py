"""Who is acting: accounts, roles, passwords, API tokens, and authenticating them (see identity.py)."""
