"""The shared vocabulary: digests, the layer torrent format, registry names, media types, options, errors (imports nothing else of ours)."""
