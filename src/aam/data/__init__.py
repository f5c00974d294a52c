"""Data layer: BIOM tables, trees, distance matrices, metadata, tokenizer, datasets."""
