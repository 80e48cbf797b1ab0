"""The training loop shared by FAST (the stamp) and FT-L (a layer's output weight)."""
