"""What every run measures and writes: metric writers, FLOPs, memory, classification reports."""
