"""Image tokens → the extra term in each cross-attention layer: K/V, hooks, weights over layers, region masks, attention maps."""
