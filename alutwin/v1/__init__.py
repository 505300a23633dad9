"""Code generated from ``proto/alutwin/v1/*.proto`` by ``proto/generate.py`` (``make proto``); do not edit."""
