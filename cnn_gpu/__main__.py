"""`python -m cnn_gpu ...` runs the `cnn-gpu` command."""
import sys

from cnn_gpu.cli import main

sys.exit(main())
