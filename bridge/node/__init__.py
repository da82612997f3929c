"""The host's BitTorrent node: the peer, the layer store, streaming downloads, the tracker client, libtorrent (torrent/)."""
