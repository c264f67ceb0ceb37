"""Our scoring flow side by side with the same job in Quix Streams (see compare.py)."""
