"""Model shapes the benchmarks build with random weights (no download): SmolLM2-135M's architecture."""

# LlamaConfig keywords of SmolLM2-135M (the demo preset's model): 30 blocks of width 576, 9 heads (3 KV).
SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
