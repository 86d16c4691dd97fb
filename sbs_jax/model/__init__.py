"""Student network: T5 v1.1 encoder-decoder in flax.linen with T5X parameter and axis names."""
