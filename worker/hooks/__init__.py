"""The hooks worker: signed webhook deliveries and batch completions, apart from the GPU path."""
