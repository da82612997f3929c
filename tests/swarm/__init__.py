"""Fleets of real bridges: rollouts, faults, shared manifests."""
