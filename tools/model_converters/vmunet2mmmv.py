"""Convert official VM-UNet checkpoints and VMamba-v0 ImageNet weights to mmmv keys.

    python tools/model_converters/vmunet2mmmv.py SRC DST [--mirror-decoder] [--encoder-depths 2 2 2 2]
                                                 [--decoder-depths 2 2 2 1] [--allow-unmapped]

SRC may be:
- VM-UNet's ``best.pth`` (a bare state dict, keys ``vmunet.*``) or ``latest.pth`` (the same under
  ``model_state_dict``): DST holds the weights of an mmseg ``EncoderDecoder`` with ``VSSEncoder`` (``backbone.*``) and
  ``VMUNetHead`` (``decode_head.*``; VM-UNet's ``final_conv`` becomes ``conv_seg``), for ``load_from`` or
  ``tools/test.py``.
- VMamba-v0 ImageNet weights (e.g. ``vmamba_small_e238_ema.pth``, keys ``patch_embed.*``, ``layers.*`` under
  ``model``): DST holds ``backbone.*`` (the classifier's ``norm``/``head`` are left out), for a ``VSSEncoder`` of the
  same arch (``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')``). With ``--mirror-decoder`` it
  is VM-UNet's initialisation instead: the encoder blocks that VM-UNet has (``--encoder-depths``, default 2 2 2 2) and
  the same weights mirrored into the decoder (encoder stage i -> decoder stage 3 - i, blocks within
  ``--decoder-depths``, default 2 2 2 1), as VM-UNet's ``load_from`` does.

SRC is read with mmmv's safe loader: a file that would run code when unpickled is refused. Every key that could not be
mapped is listed; the conversion fails on any unless --allow-unmapped is given. Keys left out on purpose are listed too.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from mmmv.checkpoint import CorruptCheckpointError, UnsafeCheckpointError  # noqa: E402
from mmmv.checkpoint.convert import save_converted  # noqa: E402
from mmmv.checkpoint.vmunet import (VMUNET_DECODER_DEPTHS, VMUNET_ENCODER_DEPTHS,  # noqa: E402
                                    convert_vss_checkpoint)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='where to write the mmmv checkpoint (.pth)')
    parser.add_argument('--mirror-decoder', action='store_true',
                        help="VMamba-v0 sources: write VM-UNet's initialisation (encoder blocks within "
                             '--encoder-depths and the same weights mirrored into the decoder)')
    parser.add_argument('--encoder-depths', type=int, nargs='+', metavar='D',
                        help='VMamba-v0 sources: keep the first D blocks of each stage (default: all; with '
                             f'--mirror-decoder {" ".join(map(str, VMUNET_ENCODER_DEPTHS))})')
    parser.add_argument('--decoder-depths', type=int, nargs='+', metavar='D',
                        help='with --mirror-decoder: blocks per decoder stage, from the bottleneck up (default '
                             f'{" ".join(map(str, VMUNET_DECODER_DEPTHS))})')
    parser.add_argument('--allow-unmapped', action='store_true',
                        help='write DST even if some source keys have no mmmv counterpart (they are dropped)')
    args = parser.parse_args(argv)
    if not osp.isfile(args.src):
        parser.error(f'SRC {args.src!r} does not exist')
    if osp.abspath(args.src) == osp.abspath(args.dst):
        parser.error('DST must differ from SRC')
    if args.decoder_depths is not None and not args.mirror_decoder:
        parser.error('--decoder-depths needs --mirror-decoder')
    if args.mirror_decoder:
        args.encoder_depths = args.encoder_depths or list(VMUNET_ENCODER_DEPTHS)
        args.decoder_depths = args.decoder_depths or list(VMUNET_DECODER_DEPTHS)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result, unmapped = convert_vss_checkpoint(args.src, args.encoder_depths, args.decoder_depths)
    except (ValueError, UnsafeCheckpointError, CorruptCheckpointError) as error:
        print(f'{args.src}: {error}', file=sys.stderr)
        return 2
    meta = result['meta']
    state_dict = result['state_dict']
    parts = {prefix: sum(k.startswith(prefix) for k in state_dict) for prefix in ('backbone.', 'decode_head.')}
    print(f'{args.src}: {meta["source_layout"]} layout, {len(state_dict)} tensors converted '
          f'({parts["backbone."]} backbone, {parts["decode_head."]} decode_head)')
    if meta['dropped_keys']:
        print(f'{len(meta["dropped_keys"])} keys left out on purpose (classifier, blocks beyond --encoder-depths):',
              *meta['dropped_keys'], sep='\n  ')
    return save_converted(result, unmapped, args.dst, args.allow_unmapped)


if __name__ == '__main__':
    sys.exit(main())
