"""layerswarm tracker: an HTTP BitTorrent tracker with a layer metainfo registry."""
