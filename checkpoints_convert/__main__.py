"""python -m checkpoints_convert --model=NAME --src=FILE.pth --out=DIR [--num_classes=4]

Converts a torchvision state_dict (.pth from torch.save, or .safetensors) into an orbax
checkpoint that `python -m strokevision_jax.train --init_from=DIR` starts from. PyTorch is not
needed, and nothing in the file is executed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

from checkpoints_convert import api
from checkpoints_convert.rules import ConversionError
from checkpoints_convert.torch_io import CheckpointError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m checkpoints_convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(api.model_names())}")
    parser.add_argument("--src", required=True, help="the .pth / .pt / .safetensors file")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="re-initialise the classifier for this many classes "
                             "(default: keep the checkpoint's)")
    parser.add_argument("--config", default="{}",
                        help='model config fields as JSON, e.g. \'{"spatial_size": [112, 112]}\'')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("checkpoints_convert").setLevel(logging.INFO)
    args = parse_args(argv)
    try:
        config = json.loads(args.config)
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        print(f"--config={args.config!r} is not a JSON object of config fields ({error})", file=sys.stderr)
        return 2
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    try:
        name = api.spec_of(args.model).name
        model = api.load_torch_checkpoint(name, args.src, args.num_classes, fast_init=True, **config)
    except (ConversionError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    params = sum(int(np.prod(v.shape)) for v in api.variable_shapes_of_kind(model, "params"))
    num_classes = model.config.num_classes
    out = api.save_converted(model, args.out, {
        "model": name, "num_classes": num_classes, "config": config,
        "source": str(args.src), "parameters": params,
    })
    print(f"{name}: {params:,} parameters, {num_classes} classes -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
