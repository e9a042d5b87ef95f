"""Run the official MambaVision (PyPI ``mambavision`` 1.2.0) and save its weights and outputs, for parity tests.

Runs in its own process because it needs import shims: the official model imports mamba_ssm's CUDA scan (replaced by
mmmv's float64 reference loop, the specification, not the backend under test) and timm imports torchvision (which has
no CPU wheel; the names timm imports are stubbed, the official model uses none of them).

    python run_official_mambavision.py OUT.pt ARCH_JSON SIZES_JSON [--seed N]

Saves {'state_dict', 'logits': {size: tensor}, 'features': {size: [4 maps before downsampling]}, 'inputs': {...}}.
"""
import json
import os
import sys
import types

import torch


def install_shims():
    from mmmv.ops import selective_scan_ref

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        return selective_scan_ref(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                  delta_softplus=delta_softplus, return_last_state=bool(return_last_state))

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torchvision_shim
    torchvision_shim.install_if_needed()
    interface = types.ModuleType('mamba_ssm.ops.selective_scan_interface')
    interface.selective_scan_fn = selective_scan_fn
    sys.modules['mamba_ssm'] = types.ModuleType('mamba_ssm')
    sys.modules['mamba_ssm.ops'] = types.ModuleType('mamba_ssm.ops')
    sys.modules['mamba_ssm.ops.selective_scan_interface'] = interface


def randomise_(model, seed, scale=0.1, norm_weights_around_one=False):
    """Random values everywhere (incl. BN statistics and layer scales) so that every weight matters: normal with std
    ``scale``; BN running variances positive, A_log perturbed around its value, and with ``norm_weights_around_one``
    every 1-D ``weight`` (the norms' scales) around 1, which keeps deep random models' activations in range."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point:
                values = torch.randn(tensor.shape, generator=generator) * scale
                if name.endswith('running_var'):
                    values = values.abs() + 0.5
                elif name.endswith('A_log'):
                    values = values + tensor
                elif norm_weights_around_one and name.endswith('.weight') and tensor.ndim == 1:
                    values = values + 1.0
                tensor.copy_(values)


def main():
    out_path, arch_json, sizes_json = sys.argv[1:4]
    seed = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == '--seed' else 0
    install_shims()
    from mambavision.models.mamba_vision import MambaVision

    arch = json.loads(arch_json)
    model = MambaVision(mlp_ratio=4, **arch).eval()
    randomise_(model, seed)
    captured = []
    for level in model.levels[:-1]:
        level.downsample.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    model.levels[-1].register_forward_hook(lambda m, args, out: captured.append(out))
    result = dict(state_dict=model.state_dict(), logits={}, features={}, inputs={})
    generator = torch.Generator().manual_seed(seed + 1)
    for size in json.loads(sizes_json):
        x = torch.randn(2, 3, *size, generator=generator)
        captured.clear()
        with torch.no_grad():
            result['logits'][tuple(size)] = model(x)
        result['features'][tuple(size)] = list(captured)
        result['inputs'][tuple(size)] = x
    torch.save(result, out_path)


if __name__ == '__main__':
    main()
