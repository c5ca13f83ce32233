"""Self-supervised pre-training pieces (MAE, DINO) and evaluation on frozen features (k-NN, linear probe)."""
