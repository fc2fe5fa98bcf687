"""Options and helpers shared by the command modules."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from vaelab.errors import VaelabError

COMMON_FLAGS = {
    # flag name -> (section, field)
    "data": ("data", "name"), "data_dir": ("data", "data_dir"), "data_path": ("data", "path"),
    "train_split": ("data", "train_split"), "val": ("data", "val"), "image_size": ("data", "image_size"),
    "limit": ("data", "limit"), "latent_dim": ("model", "latent_dim"), "loss": ("model", "loss"),
    "beta": ("model", "beta"), "epochs": ("train", "epochs"), "seed": ("train", "seed"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "lr"), "device": ("train", "device"),
}


# Options of the commands that work on a saved run.
split_option = click.option("--split", help="train, val or test (default: test, else val, else train).")
run_data_dir_option = click.option("--data-dir", help="Where the data set lives, if not where it was at training time.")
device_option = click.option("--device", default="auto", show_default=True,
                             help="auto (CUDA when present), cpu, cuda, cuda:N.")


def _echo(msg: str) -> None:
    click.echo(msg)


def _print_eval(result: dict) -> None:
    rows = []
    for k, v in result.items():
        if k == "kl_per_dim":
            v = "[" + ", ".join(f"{x:.2f}" for x in v[:10]) + (", ...]" if len(v) > 10 else "]")
        elif isinstance(v, float):
            v = f"{v:.4f}"
        rows.append((k, str(v)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        _echo(f"  {k:<{width}}  {v}")
