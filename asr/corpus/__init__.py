"""Training data: domain packs, text-to-speech voices, augmentation, corpus manifests and checks."""
