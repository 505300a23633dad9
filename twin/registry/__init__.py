"""Model versions: the on-disk store, the registry with aliases and hot swap, and model explanations."""
