"""The launch scripts in tools/: syntax, usage messages and the command lines they build.

``torch.distributed.run`` and ``srun`` are replaced by stubs that print their arguments, so nothing is launched;
the run through real processes is tested with tools/train.py.
"""
import os
import os.path as osp
import stat
import subprocess

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')
# script -> number of positional arguments it needs
SCRIPTS = {'dist_train.sh': 2, 'dist_test.sh': 3, 'slurm_train.sh': 4, 'slurm_test.sh': 4}
STUB = '#!/usr/bin/env bash\necho "PYTHONPATH=$PYTHONPATH"\nprintf "%s\\n" "$0" "$@"\n'


def run(script, *args, env=None):
    return subprocess.run(['bash', osp.join(TOOLS, script), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=30)


@pytest.fixture
def stubs(tmp_path):
    """A folder holding stub ``python`` and ``srun`` executables that print their arguments, one a line."""
    for name in ('python', 'srun'):
        path = tmp_path / name
        path.write_text(STUB)
        path.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize('script', SCRIPTS)
def test_syntax_and_executable(script):
    path = osp.join(TOOLS, script)
    assert os.stat(path).st_mode & stat.S_IXUSR, f'{script} is not executable'
    subprocess.run(['bash', '-n', path], check=True)


@pytest.mark.parametrize('script,num_args', SCRIPTS.items())
def test_usage_on_too_few_arguments(script, num_args):
    result = run(script, *['x'] * (num_args - 1))
    assert result.returncode == 2
    assert result.stderr.startswith('usage:') and script in result.stderr


@pytest.mark.parametrize('script,args', [('dist_train.sh', ['cfg.py', 'two']), ('dist_test.sh', ['cfg.py', 'c.pth', '0'])])
def test_dist_rejects_bad_gpu_count(script, args):
    assert run(script, *args).returncode == 2


def test_dist_train_command(stubs):
    env = dict(PYTHON=str(stubs / 'python'), NNODES='2', NODE_RANK='1', MASTER_ADDR='10.0.0.1', PORT='1234',
               PYTHONPATH='/elsewhere')
    result = run('dist_train.sh', 'cfg.py', '2', '--cfg-options', 'a=1 b', env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f'PYTHONPATH={ROOT}:/elsewhere'
    assert lines[2:] == ['-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1', '--master_addr=10.0.0.1',
                         '--master_port=1234', '--nproc_per_node=2', osp.join(TOOLS, 'train.py'), 'cfg.py',
                         '--launcher', 'pytorch', '--cfg-options', 'a=1 b']


def test_dist_test_defaults(stubs):
    env = dict(PYTHON=str(stubs / 'python'))
    for name in ('NNODES', 'NODE_RANK', 'MASTER_ADDR', 'PORT'):
        env[name] = ''  # empty counts as unset
    result = run('dist_test.sh', 'cfg.py', 'c.pth', '1', '--tta', env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[4:] == [
        '--nnodes=1', '--node_rank=0', '--master_addr=127.0.0.1', '--master_port=29500', '--nproc_per_node=1',
        osp.join(TOOLS, 'test.py'), 'cfg.py', 'c.pth', '--launcher', 'pytorch', '--tta']


@pytest.mark.parametrize('script,fourth,expected', [
    ('slurm_train.sh', 'work_dirs/x', ['train.py', 'cfg.py', '--work-dir=work_dirs/x']),
    ('slurm_test.sh', 'c.pth', ['test.py', 'cfg.py', 'c.pth']),
])
def test_slurm_command(stubs, script, fourth, expected):
    env = dict(PATH=f'{stubs}:{os.environ["PATH"]}', PYTHON='py', GPUS='16', GPUS_PER_NODE='8',
               SRUN_ARGS='--quotatype=auto --exclusive')
    result = run(script, 'part', 'job', 'cfg.py', fourth, '--cfg-options', 'a=1 b', env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2:13] == ['-p', 'part', '--job-name=job', '--gres=gpu:8', '--ntasks=16', '--ntasks-per-node=8',
                           '--cpus-per-task=5', '--kill-on-bad-exit=1', '--quotatype=auto', '--exclusive', 'py']
    expected = ['-u', osp.join(TOOLS, expected[0]), *expected[1:], '--launcher=slurm', '--cfg-options', 'a=1 b']
    assert lines[13:] == expected
