"""layerswarm bridge: a per-host registry mirror backed by a BitTorrent swarm."""
