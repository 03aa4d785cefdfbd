"""`mobile-sam export --model vit_t|PATH --out DIR [--opset 17] [--quantize int8]`.

Writes encoder.onnx, decoder.onnx (SAM's ONNX decoder interface), decoder_lowres.onnx and
upscale.onnx (used by the torch-free runtime) and model.json into DIR; with --quantize int8
also encoder_int8.onnx, whose mask IoU against fp32 and speed-up are printed and recorded in
model.json. Run the result with `mobile_sam.onnx.OnnxPredictor(DIR)` or `--model DIR` (see
docs/deploy.md).

`--format anylabeling` or `--format samexporter` writes instead the pair those tools load:
mobile_sam.encoder.onnx (the image in, preprocessing in the graph) and mobile_sam.decoder.onnx,
plus mobile_sam.yaml, the model config X-AnyLabeling reads (docs/deploy.md, "Labeling tools").
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UserError, add_common_arguments, load_model, prepare_out_dir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export the model to ONNX (encoder, decoder) for torch-free inference",
        description="Export the image encoder and the mask decoder to ONNX files that run with "
                    "onnxruntime, numpy and Pillow only (mobile_sam.onnx.OnnxPredictor).",
    )
    add_common_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--format", default="mobile_sam",
                        choices=["mobile_sam", "anylabeling", "samexporter"],
                        help="mobile_sam (default): the files mobile_sam runs (--model DIR); "
                             "anylabeling / samexporter: the encoder (image in) and decoder "
                             "pair those tools load, with X-AnyLabeling's model config")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset (default 17; 14 up to what the installed exporter supports)")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="also write encoder_int8.onnx (dynamic int8) and report its mask "
                             "IoU against fp32 and its speed-up")
    parser.add_argument("--eval-images", nargs="+", default=None, metavar="IMAGE",
                        help="photos for the --quantize report (default: a synthetic pattern)")
    parser.add_argument("--single-mask", action="store_true",
                        help="decoder.onnx returns one mask per prompt, chosen as SAM's ONNX "
                             "model does (the runtime files are unaffected)")
    parser.add_argument("--stability-score", action="store_true",
                        help="decoder.onnx returns stability scores instead of predicted IoU")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise UserError(f"export needs onnx and onnxruntime ({exc.name} is missing): "
                        "pip install 'mobile_sam[onnx]'") from None
    from ..io import load_image
    from ..onnx.export import DEFAULT_OPSET, check_opset, export_onnx, export_tool_format

    opset = check_opset(DEFAULT_OPSET if args.opset is None else args.opset)
    if args.device != "cpu":
        raise UserError(f"export runs on the CPU; got --device {args.device}")
    if args.format != "mobile_sam":
        used = [flag for flag, value in [("--quantize", args.quantize),
                                         ("--eval-images", args.eval_images),
                                         ("--single-mask", args.single_mask),
                                         ("--stability-score", args.stability_score)] if value]
        if used:
            raise UserError(f"{', '.join(used)} only apply to --format mobile_sam (the "
                            f"{args.format} decoder always returns one mask per prompt)")
        out = prepare_out_dir(args.out)
        names = export_tool_format(load_model(args), out, args.format, opset=opset, log=print)
        print(f"wrote {', '.join(names.values())} to {out}")
        return 0
    if args.eval_images and not args.quantize:
        raise UserError("--eval-images is only used with --quantize int8")
    images = [load_image(path) for path in args.eval_images or []]
    out = prepare_out_dir(args.out)
    model = load_model(args)  # resolves --model to a file path in args.model
    info = export_onnx(model, out, opset=opset, quantize=args.quantize,
                       single_mask=args.single_mask, stability_score=args.stability_score,
                       checkpoint=Path(args.model), eval_images=images, threads=args.threads,
                       log=print)
    print(f"wrote {', '.join(info['files'].values())} and model.json to {out}")
    return 0
