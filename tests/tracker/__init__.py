"""The tracker: protocol, access table, configuration, storage conformance, real processes."""
