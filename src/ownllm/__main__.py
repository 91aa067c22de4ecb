"""Lets `python -m ownllm` (and `torchrun -m ownllm`) run the command line."""

from ownllm.cli import main

if __name__ == "__main__":
    main()
