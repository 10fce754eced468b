"""Benchmarks of the training / evaluation pipelines (docs/design.md "Performance"):
`python -m benchmarks.throughput` measures this project's pipelines against the official-style
reference pipeline (`benchmarks.reference`) in the same run."""
