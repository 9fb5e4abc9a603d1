"""Training: recipes, the trainer, LoRA and FSDP2 wrapping (the model itself knows no parallelism)."""
