"""Checks ``tools/train.py`` and ``tools/test.py`` run before building the Runner, so that a missing download or a
setting the machine cannot run stops in a second with one line naming the file and the fix, instead of a traceback
from deep inside a toolbox after minutes of model building (a missing COCO annotation file surfaces as a pycocotools
error after the whole config dump; a missing pretrained checkpoint after the dataset is indexed).

Each check raises :class:`mmmv.engine.toolbox.SetupError`. What is checked:

- the toolbox of the config imports (mmpretrain without a working torchvision names the matching build);
- the dataset files of the loaders the run uses (``ann_file``, ``data_root``, ``data_prefix`` folders, the
  evaluator's ``ann_file``), with the docs section and the command that prepares them;
- the local checkpoints the model's ``init_cfg`` entries load in training;
- mixed precision (``--amp`` or an ``AmpOptimWrapper`` config) on a machine without an accelerator mmengine's AMP
  supports.

Paths with a scheme (``s3://``, ``http://``, ``open-mmlab://``) and datasets that write their own data on first use
are not checked.
"""
import os.path as osp
from typing import Iterator, List, Optional, Tuple

from .toolbox import SetupError, import_toolbox

# dataset types whose data are generated on first use (mmmv.datasets)
SELF_WRITING_DATASETS = ('DemoLesionDataset', )
# per dataset type: where the docs describe the data, and how to prepare it
DATA_HELP = {
    'CocoDataset': ('docs/model_zoo.md#datasets (COCO 2017)',
                    'download train2017.zip, val2017.zip and annotations_trainval2017.zip from cocodataset.org '
                    'into data/coco/'),
    'ADE20KDataset': ('docs/model_zoo.md#datasets (ADE20K)', 'unzip ADEChallengeData2016.zip into data/ade/'),
    'ImageNet': ('docs/model_zoo.md#datasets (ImageNet-1K)',
                 'put the ILSVRC2012 train / val folders under data/imagenet/'),
    'ISIC2017Dataset': ('docs/segmentation.md#isic-2017-and-isic-2018',
                        'python tools/dataset_converters/prepare_isic.py --help'),
    'ISIC2018Dataset': ('docs/segmentation.md#isic-2017-and-isic-2018',
                        'python tools/dataset_converters/prepare_isic.py --help'),
    'SynapseSliceDataset': ('docs/segmentation.md#synapse', 'python tools/dataset_converters/prepare_synapse.py --help'),
}
DEMO_COCO = ('docs/getting_started.md#2-the-demo', 'python tools/misc/make_demo_data.py --root data/demo_coco')
GENERIC_DATA_HELP = ('docs/getting_started.md', 'set the data_root entries with --cfg-options')
# converters of official weights, by backbone type
CONVERTERS = {
    'MambaVision': 'python tools/model_converters/mambavision2mmmv.py OFFICIAL.pth.tar {path}',
    'VSSEncoder': 'python tools/model_converters/vmunet2mmmv.py OFFICIAL.pth {path}',
}
# the loaders each mode builds, with the evaluator that goes with them
LOADERS = {'train': (('train_dataloader', None), ('val_dataloader', 'val_evaluator')),
           'test': (('test_dataloader', 'test_evaluator'), )}
AMP_DEVICES = 'CUDA, NPU, MLU or MUSA'


def run_all(cfg, mode: str, *, amp: bool = False) -> None:
    """Every check for a ``mode`` ('train' or 'test') run of `cfg` (after the CLI options are applied)."""
    import_toolbox(cfg.get('default_scope'))
    if mode == 'train':
        check_amp(cfg, amp)
        check_pretrained(cfg)
    check_data(cfg, mode)


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------
def _local(path) -> bool:
    return isinstance(path, str) and path != '' and '://' not in path


def _leaf_datasets(dataset) -> Iterator[dict]:
    """The datasets inside wrappers (RepeatDataset, ClassBalancedDataset, ConcatDataset, MultiImageMixDataset)."""
    if not isinstance(dataset, dict):
        return
    if isinstance(dataset.get('dataset'), dict):
        yield from _leaf_datasets(dataset['dataset'])
    elif isinstance(dataset.get('datasets'), (list, tuple)):
        for inner in dataset['datasets']:
            yield from _leaf_datasets(inner)
    else:
        yield dataset


def _join(root: str, path: str) -> str:
    return path if osp.isabs(path) or not root else osp.join(root, path)


def _dataset_paths(dataset: dict) -> List[Tuple[str, str]]:
    """(path, 'file' or 'folder') of what `dataset` reads, as the toolboxes' BaseDataset joins them."""
    root = dataset.get('data_root') or ''
    paths = []
    if _local(root):
        paths.append((root, 'folder'))
    elif root:
        return []  # remote storage
    if _local(dataset.get('ann_file')):
        paths.append((_join(root, dataset['ann_file']), 'file'))
    prefix = dataset.get('data_prefix')
    prefixes = prefix.values() if isinstance(prefix, dict) else [prefix]
    paths += [(_join(root, p), 'folder') for p in prefixes if _local(p)]
    if _local(dataset.get('split')) and not dataset.get('data_prefix'):  # mmpretrain's ImageNet(split='train')
        paths.append((_join(root, dataset['split']), 'folder'))
    return paths


def _data_help(dataset_type: str, root: str) -> Tuple[str, str]:
    if 'demo_coco' in (root or ''):
        return DEMO_COCO
    return DATA_HELP.get(dataset_type, GENERIC_DATA_HELP)


def _missing(path: str, kind: str) -> bool:
    return not (osp.isfile(path) if kind == 'file' else osp.isdir(path))


def check_data(cfg, mode: str) -> None:
    """Raise SetupError naming the first missing dataset file or folder of the loaders a `mode` run builds."""
    for loader_key, evaluator_key in LOADERS[mode]:
        loader = cfg.get(loader_key)
        if not loader or (loader_key == 'val_dataloader' and cfg.get('val_cfg') is None):
            continue
        for dataset in _leaf_datasets(loader.get('dataset')):
            dataset_type = str(dataset.get('type', ''))
            if dataset_type.split('.')[-1] in SELF_WRITING_DATASETS:
                continue
            for path, kind in _dataset_paths(dataset):
                if _missing(path, kind):
                    _raise_missing_data(path, kind, f'{loader_key}.dataset ({dataset_type})', dataset_type,
                                        dataset.get('data_root'))
        evaluators = cfg.get(evaluator_key) if evaluator_key else None
        for evaluator in (evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]):
            if isinstance(evaluator, dict) and _local(evaluator.get('ann_file')) and \
                    _missing(evaluator['ann_file'], 'file'):
                dataset_type = str(loader.get('dataset', {}).get('type', ''))
                _raise_missing_data(evaluator['ann_file'], 'file', evaluator_key, dataset_type,
                                    loader.get('dataset', {}).get('data_root'))


def _raise_missing_data(path: str, kind: str, where: str, dataset_type: str, root: Optional[str]) -> None:
    docs, prepare = _data_help(dataset_type.split('.')[-1], root)
    raise SetupError(f'dataset {kind} {path!r} ({where}) does not exist; see {docs}: {prepare}; or point the config '
                     f'at your copy, e.g. --cfg-options {where.split(" ")[0]}.data_root=/path/to/data/')


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained checkpoints
# ---------------------------------------------------------------------------------------------------------------------
def _init_cfgs(node, where: str, owner_type: Optional[str] = None) -> Iterator[Tuple[str, dict, Optional[str]]]:
    """(config path, init_cfg dict, type of the module it belongs to) of every init_cfg inside `node`."""
    if isinstance(node, dict):
        owner_type = node.get('type', owner_type)
        for key, value in node.items():
            if key == 'init_cfg':
                for init in (value if isinstance(value, (list, tuple)) else [value]):
                    if isinstance(init, dict):
                        yield f'{where}.init_cfg', init, owner_type
            else:
                yield from _init_cfgs(value, f'{where}.{key}', owner_type)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _init_cfgs(value, f'{where}[{index}]', owner_type)


def check_pretrained(cfg) -> None:
    """Raise SetupError naming the first local ``Pretrained`` checkpoint of the model that does not exist."""
    for where, init, owner in _init_cfgs(cfg.get('model'), 'model'):
        path = init.get('checkpoint')
        if init.get('type') != 'Pretrained' or not _local(path) or osp.isfile(path):
            continue
        convert = CONVERTERS.get(str(owner).split('.')[-1])
        how = (f'convert the official weights: {convert.format(path=path)} (docs/converting_weights.md)' if convert
               else 'download or convert it (docs/converting_weights.md)')
        raise SetupError(f'pretrained checkpoint {path!r} ({where}) does not exist; {how}; or train from random '
                         f'weights with --cfg-options {where}=None')


# ---------------------------------------------------------------------------------------------------------------------
# Mixed precision
# ---------------------------------------------------------------------------------------------------------------------
def amp_device_available() -> bool:
    """Whether mmengine's AmpOptimWrapper can run here (it asserts one of these devices)."""
    from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
    return is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available()


def check_amp(cfg, amp_flag: bool) -> None:
    """Raise SetupError when the run would use mmengine's AMP on a machine without a device it supports."""
    wrapper = cfg.get('optim_wrapper', {}).get('type', 'OptimWrapper')
    if wrapper != 'AmpOptimWrapper' or amp_device_available():
        return
    if amp_flag:
        raise SetupError(f"--amp needs a GPU: mmengine's AmpOptimWrapper runs on {AMP_DEVICES} devices only and this "
                         'machine has none; train without --amp (float32 on the CPU)')
    raise SetupError(f"this config trains with mixed precision (optim_wrapper.type='AmpOptimWrapper'), which mmengine "
                     f'runs on {AMP_DEVICES} devices only and this machine has none; add --no-amp to train in '
                     'float32 on the CPU')
