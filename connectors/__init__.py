"""Built-in connector kinds, one package each; they register through entry points (pyproject.toml)."""
