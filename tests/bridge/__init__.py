"""The bridge's client API: registry views, auth, routing, configuration, upstream failures."""
