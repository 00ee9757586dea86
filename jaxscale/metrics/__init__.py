"""What every run measures and writes: metric writers (`writers.read_jsonl` reads a run's
`metrics.jsonl`), FLOPs, memory, classification reports."""
