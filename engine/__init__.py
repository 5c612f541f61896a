"""MLX engine for Qwen3.5: config, model, loading, tokenizer, caches, sampling and generation."""
