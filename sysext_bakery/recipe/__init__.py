"""Recipes and the lock: the schema, loading and validation, the generated reference."""
