"""Core metrics on feature tensors: all-pairs re-ID scoring, privacy and recall statistics, fidelity."""
