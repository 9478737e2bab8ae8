#!/usr/bin/env python
"""Convert a published BCN+WS ImageNet checkpoint (released with the authors' code, any variant) into a framework's
own file.

    python tools/convert_pretrained.py rn50_bcn_ws.pth --to detectron2 pretrained/rn50_bcn_ws_d2.pkl
    python tools/convert_pretrained.py rn101-bcn-ws.pth.tar --to mmseg pretrained/rn101_bcn_ws_mmseg.pth

detectron2: a .pkl in detectron2's ImageNet-backbone convention (names matched by suffix, so it
serves ResNet and ResNet-FPN models). mmseg: {'state_dict': ...} for init_cfg 'Pretrained'.
Both frameworks can also read the original file directly (MODEL.WEIGHTS, init_cfg
'BCNPretrained'); converting only saves reading it each time.
"""
import argparse
import pickle

import torch

from bcn.pretrained import read_published, resnet_spec


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("--to", choices=["detectron2", "mmseg"], required=True)
    parser.add_argument("output")
    parser.add_argument("--sha256", help="refuse the source unless it has this sha256")
    args = parser.parse_args(argv)
    notes = []
    state = read_published(args.source, args.sha256, notes)
    spec = resnet_spec(state)
    if args.to == "detectron2":
        from bcn_det.checkpoint import canonical_to_detectron2

        model = {k: v.numpy() for k, v in canonical_to_detectron2(state).items()}
        with open(args.output, "wb") as f:
            pickle.dump({"model": model, "__author__": "bcn (published BCN+WS ImageNet)",
                         "matching_heuristics": True}, f)
    else:
        torch.save({"state_dict": state, "meta": {"source": args.source, **spec}}, args.output)
    print(f"{args.source} -> {args.output} ({args.to}): {len(state)} tensors, {spec}"
          + "".join(f"; {note}" for note in notes))


if __name__ == "__main__":
    main()
