"""USB-CV configs: ViTs fine-tuned from pretrained weights with USB's recipe."""
