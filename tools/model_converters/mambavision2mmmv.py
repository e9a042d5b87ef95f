"""Convert official MambaVision checkpoints to mmmv keys.

    python tools/model_converters/mambavision2mmmv.py SRC DST [--allow-unmapped]

SRC may be an official classification checkpoint (``mambavision_tiny_1k.pth.tar``, weights under ``state_dict``), a
Hugging Face ``model.safetensors`` of the same models, or an official detection/segmentation checkpoint (backbone
under ``backbone.`` with ``outnorm{i}``). DST holds ``{'state_dict': ..., 'meta': ...}``: classification weights as
``backbone.*`` + ``head.fc.*`` (configs/mambavision_*_in1k.py, and usable as ``init_cfg`` of any detection or
segmentation config with ``prefix='backbone.'``); detection/segmentation weights with the backbone renamed and the
neck and heads unchanged.

SRC is read with mmmv's safe loader: a file that would run code when unpickled is refused. Every key that could not
be mapped is listed; the conversion fails on any unless --allow-unmapped is given.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from mmmv.checkpoint.convert import convert_checkpoint, save_converted  # noqa: E402
from mmmv.checkpoint.safe_load import CorruptCheckpointError, UnsafeCheckpointError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='official checkpoint (.pth.tar, .pth or .safetensors)')
    parser.add_argument('dst', help='where to write the mmmv checkpoint (.pth)')
    parser.add_argument('--allow-unmapped', action='store_true',
                        help='write DST even if some source keys have no mmmv counterpart (they are dropped)')
    args = parser.parse_args(argv)
    if not osp.isfile(args.src):
        parser.error(f'SRC {args.src!r} does not exist')
    if osp.abspath(args.src) == osp.abspath(args.dst):
        parser.error('DST must differ from SRC')

    try:
        result, unmapped = convert_checkpoint(args.src)
    except (ValueError, TypeError, UnsafeCheckpointError, CorruptCheckpointError) as error:
        print(f'{args.src}: {error}', file=sys.stderr)  # one line naming the problem; no traceback
        return 2
    meta = result['meta']
    print(f'{args.src}: {meta["source_layout"]} layout, {len(result["state_dict"])} tensors converted')
    return save_converted(result, unmapped, args.dst, args.allow_unmapped)


if __name__ == '__main__':
    sys.exit(main())
