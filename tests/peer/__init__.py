"""The host's node: peers with real libtorrent sessions, the store, alerts, the seed command."""
