"""Models: aliases, the architecture registry and loading."""
