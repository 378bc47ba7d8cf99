"""One module per op family: its contract (checks, output geometry), NumPy path and CUDA path side by side."""
