"""The local stack for the demo and the tests: daemon starters on loopback and a test-image generator."""
