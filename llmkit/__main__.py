"""`python -m llmkit` (also the entry point for `accelerate launch -m llmkit` and `torchrun -m llmkit`)."""

from llmkit.cli import main

if __name__ == "__main__":
    main()
