"""Reference images → encoder outputs: preprocessing, the CLIP vision encoder, the embedding cache, multi-image combining, portable embeds."""
