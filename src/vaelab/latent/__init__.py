"""Working in the latent space: samplers, pictures, inpainting, steering, scoring samples."""

__all__ = ["disentangle", "inpaint", "pictures", "pixelcnn", "sample_eval", "sampling", "steer"]
