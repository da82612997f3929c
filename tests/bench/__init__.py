"""The benchmarks' own machinery: the simulated fleet and a small rollout run."""
