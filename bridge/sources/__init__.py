"""Where bytes come from: the origin registry (client, auth, routing), manifests, and the blob sources (store, swarm, fetch, relay)."""
