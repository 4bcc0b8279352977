"""Drop-in replacement: put a discovered layer where a model has BatchNorm(+activation).

The model is traced with torch.fx, so activations applied in `forward`
(`F.relu(self.bn1(x))`) are found as well as activation modules. Each
`BatchNorm2d` becomes the new layer; when its only user is a ReLU, SiLU or
GELU, that activation is removed too (the layer is a norm *and* an
activation). Models fx cannot trace fall back to module structure: a BN
followed by an activation inside an `nn.Sequential`, or a BN alone.
"""
from __future__ import annotations

import warnings
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import fx, nn

from .codegen import layer_class
from .graph import Graph

ACTIVATION_MODULES = (nn.ReLU, nn.SiLU, nn.GELU)
ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.silu, F.gelu, torch.nn.functional.relu_}
ACTIVATION_METHODS = {"relu", "relu_"}

LayerSpec = Union[str, Graph, Callable[[int], nn.Module]]


def layer_factory(layer: LayerSpec) -> Callable[[int], nn.Module]:
    """A formula, a graph, an (exported) module class or a factory -> channels -> module."""
    if isinstance(layer, (str, Graph)):
        return layer_class(layer)
    if isinstance(layer, nn.Module):
        raise TypeError("pass the layer's class or a factory taking the channel count, not an instance")
    if callable(layer):
        return layer
    raise TypeError(f"cannot make a layer from {type(layer).__name__}")


def replace_norm_act(model: nn.Module, layer: LayerSpec) -> nn.Module:
    """Return `model` with every BatchNorm2d(+activation) replaced by `layer`.

    Returns an `fx.GraphModule` when the model traces, else the model itself
    modified in place. New layers sit on the device and dtype of the BN they replace."""
    make = layer_factory(layer)
    try:
        traced = fx.symbolic_trace(model)
    except Exception as err:  # fx cannot trace data-dependent control flow
        warnings.warn(f"torch.fx could not trace the model ({type(err).__name__}); "
                      "replacing by module structure instead")
        return _replace_in_modules(model, make)
    return _replace_traced(traced, make)


def _new_layer(bn: nn.BatchNorm2d, make) -> nn.Module:
    new = make(bn.num_features)
    reference = next(bn.parameters(), None) if bn.affine else bn.running_mean
    if reference is not None:
        new = new.to(device=reference.device, dtype=reference.dtype)
    return new


def _is_activation(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


def _replace_traced(traced: fx.GraphModule, make) -> fx.GraphModule:
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        bn = modules[node.target]
        traced.set_submodule(node.target, _new_layer(bn, make))
        users = list(node.users)
        if len(users) == 1 and _is_activation(users[0], modules) and users[0].args[0] is node:
            users[0].replace_all_uses_with(node)
            traced.graph.erase_node(users[0])
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


def _replace_in_modules(model: nn.Module, make) -> nn.Module:
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if not isinstance(child, nn.BatchNorm2d):
                continue
            setattr(parent, name, _new_layer(child, make))
            if isinstance(parent, nn.Sequential) and i + 1 < len(children) \
                    and isinstance(children[i + 1][1], ACTIVATION_MODULES):
                setattr(parent, children[i + 1][0], nn.Identity())
    return model


class ChannelsLast(nn.Module):
    """A layer that takes channels on axis 1, applied to channels-last input: tokens (N, L, D)
    or images (N, H, W, C). It sees (N, D, L) (or (N, C, H, W)) and answers in the input's
    layout."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x.movedim(-1, 1)).movedim(1, -1)
