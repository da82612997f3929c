"""The test suite: unit tests per room, end-to-end tests with real processes (slow), one fixtures module."""
