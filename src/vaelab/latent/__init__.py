"""Working in the latent space: samplers, pictures, inpainting, steering, scoring samples."""
