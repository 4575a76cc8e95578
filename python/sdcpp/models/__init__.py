"""Model graphs (ggml, in sdcpp._core) with numpy in, numpy out: text encoders, UNet, VAE."""
