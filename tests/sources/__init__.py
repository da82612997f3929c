"""The swarm source's decisions with in-process fakes, and the relay client and view."""
