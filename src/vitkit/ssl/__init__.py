"""Self-supervised pre-training pieces (MAE, DINO) built on vitkit's VisionTransformer."""
