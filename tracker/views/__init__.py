"""One Blueprint per feature."""
