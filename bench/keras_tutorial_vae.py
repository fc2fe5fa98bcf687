"""The Keras tutorial conv VAE itself (keras.io/examples/generative/vae), on TensorFlow's CPU build.

This is the tutorial's code (Keras 3, TensorFlow backend) with three changes, all for
benchmarking and none to the model or the training:

1. the 70,000 digits are read from the local IDX files ($VAELAB_DATA/mnist, the same files
   vaelab reads) instead of ``keras.datasets.mnist.load_data()``, which downloads;
2. ``--seed S`` calls ``keras.utils.set_random_seed(S)`` first (the tutorial sets none, so
   its weights differ run to run), and ``--epochs N`` (default the tutorial's 30);
3. a callback records each epoch's wall time and the logged ``loss`` (the tutorial's
   running mean of the per-batch total loss, which Keras prints), written with ``--json``.

It needs TensorFlow, which vaelab does not depend on; use a separate environment:

    python3.11 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0
    /tmp/tfenv/bin/python bench/keras_tutorial_vae.py --json bench/out/keras-tutorial.json

Measured results are in bench/README.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_T_START = time.perf_counter()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def read_images(path: Path) -> np.ndarray:
    """uint8 (N, 28, 28) from an IDX3 file, header checked (magic 2051)."""
    data = gzip.open(path).read()
    magic, n, h, w = np.frombuffer(data[:16], dtype=">u4")
    if magic != 2051 or len(data) != 16 + n * h * w:
        sys.exit(f"keras_tutorial_vae.py: {path} is not an IDX image file")
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(n, h, w)


def load_digits() -> np.ndarray:
    root = Path(os.environ.get("VAELAB_DATA") or REPO.parent / "shared" / "data") / "mnist"
    files = [root / "train-images-idx3-ubyte.gz", root / "t10k-images-idx3-ubyte.gz"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        sys.exit(f"keras_tutorial_vae.py: MNIST not found: {root} lacks {', '.join(missing)}; "
                 "set VAELAB_DATA to the folder that holds mnist/")
    x_train, x_test = (read_images(f) for f in files)
    # as the tutorial: concatenate, expand_dims(-1), astype("float32") / 255
    mnist_digits = np.concatenate([x_train, x_test], axis=0)
    return np.expand_dims(mnist_digits, -1).astype("float32") / 255


# ----------------------------------------------------------------------------- the tutorial
class Sampling(layers.Layer):
    """Uses (z_mean, z_log_var) to sample z, the vector encoding a digit."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        batch = ops.shape(z_mean)[0]
        dim = ops.shape(z_mean)[1]
        epsilon = keras.random.normal(shape=(batch, dim), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon


def build_encoder(latent_dim: int = 2) -> keras.Model:
    encoder_inputs = keras.Input(shape=(28, 28, 1))
    x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(encoder_inputs)
    x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(16, activation="relu")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    z = Sampling()([z_mean, z_log_var])
    return keras.Model(encoder_inputs, [z_mean, z_log_var, z], name="encoder")


def build_decoder(latent_dim: int = 2) -> keras.Model:
    latent_inputs = keras.Input(shape=(latent_dim,))
    x = layers.Dense(7 * 7 * 64, activation="relu")(latent_inputs)
    x = layers.Reshape((7, 7, 64))(x)
    x = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)
    decoder_outputs = layers.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(x)
    return keras.Model(latent_inputs, decoder_outputs, name="decoder")


class VAE(keras.Model):
    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

    @property
    def metrics(self):
        return [self.total_loss_tracker, self.reconstruction_loss_tracker, self.kl_loss_tracker]

    def train_step(self, data):
        with tf.GradientTape() as tape:
            z_mean, z_log_var, z = self.encoder(data)
            reconstruction = self.decoder(z)
            reconstruction_loss = ops.mean(
                ops.sum(keras.losses.binary_crossentropy(data, reconstruction), axis=(1, 2)))
            kl_loss = -0.5 * (1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))
            kl_loss = ops.mean(ops.sum(kl_loss, axis=1))
            total_loss = reconstruction_loss + kl_loss
        grads = tape.gradient(total_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.total_loss_tracker.update_state(total_loss)
        self.reconstruction_loss_tracker.update_state(reconstruction_loss)
        self.kl_loss_tracker.update_state(kl_loss)
        return {
            "loss": self.total_loss_tracker.result(),
            "reconstruction_loss": self.reconstruction_loss_tracker.result(),
            "kl_loss": self.kl_loss_tracker.result(),
        }


# ----------------------------------------------------------------------------- timing
class EpochLog(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._t0, 3),
                          **{k: float(v) for k, v in (logs or {}).items()}})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=None, help="keras.utils.set_random_seed(S) first (default: none)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the per-epoch log and totals as JSON")
    args = p.parse_args()
    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)
    mnist_digits = load_digits()
    encoder, decoder = build_encoder(), build_decoder()
    vae = VAE(encoder, decoder)
    vae.compile(optimizer=keras.optimizers.Adam())
    log = EpochLog()
    vae.fit(mnist_digits, epochs=args.epochs, batch_size=128, callbacks=[log], verbose=2)
    params = encoder.count_params() + decoder.count_params()
    wall = time.perf_counter() - _T_START
    later = [r["seconds"] for r in log.rows[1:]] or [log.rows[0]["seconds"]]
    print(f"keras {keras.__version__}, tensorflow {tf.__version__}: {params:,} parameters; final loss "
          f"{log.rows[-1]['loss']:.4f}; first epoch {log.rows[0]['seconds']:.1f}s, later epochs "
          f"{sorted(later)[len(later) // 2]:.1f}s (median); {wall:.1f}s since start")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "script": "keras_tutorial_vae.py", "keras": keras.__version__, "tensorflow": tf.__version__,
            "seed": args.seed, "epochs": args.epochs, "params": params, "images": len(mnist_digits),
            "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                        "cpus": os.cpu_count()},
            "per_epoch": log.rows, "final_loss": log.rows[-1]["loss"],
            "median_epoch_seconds_after_first": sorted(later)[len(later) // 2],
            "wall_seconds_in_process": round(wall, 3),
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
