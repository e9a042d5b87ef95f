"""mmmv: Mamba-based vision backbones (MambaVision, VM-UNet) for the OpenMMLab toolboxes."""
import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version() -> str:
    scope: dict = {}
    with open(osp.join(HERE, 'mmmv', 'version.py'), encoding='utf-8') as f:
        exec(f.read(), scope)
    return scope['__version__']


# mmcv is deliberately not a requirement of any extra: it has no wheels for current torch and must be built
# with its ops against the installed torch (tools/install.sh does that). The toolboxes pin mmcv < 2.2.
EXTRAS = {
    'det': ['mmengine>=0.10.3,<1.0', 'mmdet==3.3.0'],
    # h5py reads the Synapse test volumes (tools/dataset_converters/prepare_synapse.py)
    'seg': ['mmengine>=0.10.3,<1.0', 'mmsegmentation==1.2.2', 'ftfy', 'regex', 'h5py'],
    'cls': ['mmengine>=0.10.3,<1.0', 'mmpretrain==1.2.0'],
    'triton': ['triton>=3.0'],
    # ONNX export and its check in onnxruntime (tools/deployment/pytorch2onnx.py, docs/deployment.md)
    'deploy': ['onnx', 'onnxruntime', 'onnxscript'],
    'dev': ['pytest>=7', 'pytest-timeout', 'safetensors', 'h5py', 'onnx', 'onnxruntime', 'onnxscript'],
}
EXTRAS['all'] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name='mmmv',
    version=read_version(),
    description='Mamba-based vision backbones (MambaVision, VM-UNet) for mmdetection, mmsegmentation and mmpretrain',
    long_description=open(osp.join(HERE, 'README.md'), encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['mmmv', 'mmmv.*']),
    include_package_data=True,
    install_requires=['torch>=2.5', 'numpy', 'pillow'],
    extras_require=EXTRAS,
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
