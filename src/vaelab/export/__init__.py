"""Exporting a run: CSV tables of reconstructions and codes (``table``), ONNX (``onnx``)."""

from vaelab._deprecated import moved_name

__all__ = ["onnx", "table"]

# Names this package held when it was one module (deprecated, gone in 0.3).
_MOVED = dict.fromkeys(["EXPORTS", "export", "export_latents", "export_reconstructions", "latent_header",
                        "reconstruction_header"], "vaelab.export.table")


def __getattr__(name: str):
    return moved_name(__name__, name, _MOVED)
