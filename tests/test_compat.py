"""mmmv.compat: mmpretrain's multimodal models are turned off next to a transformers that breaks them
(>= 4.56, which removed names they import), and only then. The installed transformers is faked by its metadata."""
import importlib.util
import subprocess
import sys

import pytest

from mmmv.compat import version_tuple

needs_mmpretrain = pytest.mark.skipif(importlib.util.find_spec('mmpretrain') is None, reason='needs mmpretrain')


def _fake_transformers(root, version):
    info = root / f'transformers-{version}.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: transformers\nVersion: {version}\n')
    return str(root)


def _run(code, path):
    env = {'PYTHONPATH': path + ':' + ':'.join(p for p in sys.path if p), 'PATH': '/usr/bin:/bin'}
    proc = subprocess.run([sys.executable, '-W', 'always', '-c', code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip(), proc.stderr


def test_version_tuple():
    assert version_tuple('4.56.0') == (4, 56)
    assert version_tuple('4.56.0rc1') == (4, 56)
    assert version_tuple('5.0.0.dev0') == (5, 0)
    assert version_tuple('4.9') < (4, 56) < version_tuple('4.100.1')


@needs_mmpretrain
@pytest.mark.parametrize('order', ['mmmv first', 'mmpretrain first'])
def test_multimodal_turned_off_with_a_transformers_that_breaks_it(tmp_path, order):
    imports = ['import mmmv', 'import mmpretrain.utils.dependency as dependency']
    if order == 'mmpretrain first':
        imports.reverse()
    out, err = _run('\n'.join(imports) + '\nimport mmpretrain.utils.dependency as dependency\n'
                    'print(dependency.WITH_MULTIMODAL)', _fake_transformers(tmp_path, '4.56.0'))
    assert out == 'False'
    assert 'transformers 4.56.0' in err and 'pip install "transformers<4.56"' in err


@needs_mmpretrain
def test_multimodal_left_alone_with_an_older_transformers(tmp_path):
    out, err = _run('import mmmv\nimport mmpretrain.utils.dependency as dependency\nprint(dependency.WITH_MULTIMODAL)',
                    _fake_transformers(tmp_path, '4.55.4'))
    assert out == 'True'
    assert 'multimodal' not in err
