"""Self-supervised pre-training (MAE, DINO) and evaluation on frozen features."""
