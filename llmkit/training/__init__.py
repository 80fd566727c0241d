"""Training pieces around HF Trainer: arguments, precision, Trainer subclasses, callbacks, run directories."""
