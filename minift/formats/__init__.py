"""Files on disk: atomic writes, JSON and safetensors; Hugging Face GPT-2 model folders; the BPE tokenizer's files."""
