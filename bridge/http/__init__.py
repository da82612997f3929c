"""The bridge's HTTP face: the app factory, registry v2 views, admin views, metrics, the server."""
