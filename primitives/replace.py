"""Drop-in replacement: put a discovered layer where a model has BatchNorm(+activation),
or where a Transformer has LayerNorm or RMSNorm.

`replace_norm_act`: the model is traced with torch.fx, so activations applied in
`forward` (`F.relu(self.bn1(x))`) are found as well as activation modules. Each
`BatchNorm2d` becomes the new layer; when its only user is a ReLU, SiLU or
GELU, that activation is removed too (the layer is a norm *and* an
activation). Models fx cannot trace fall back to module structure: a BN
followed by an activation inside an `nn.Sequential`, or a BN alone.

`replace_norm`: every `nn.LayerNorm` and `nn.RMSNorm` (subclasses included, such as
timm's) over the last dimension becomes the new layer, found by module structure
(torch.fx traces *through* modules outside torch.nn, so a timm LayerNorm would be
an anonymous `F.layer_norm` call in a traced graph). Such a norm sees channels last,
tokens (N, L, D) or images (N, H, W, C); the new layer, which takes channels on axis
1, is wrapped in `ChannelsLast`. A subclass whose class name ends in "2d" (timm's
`LayerNorm2d`: channels first, (N, C, H, W)) gets the layer unwrapped.
"""
from __future__ import annotations

import warnings
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import fx, nn

from .codegen import layer_class
from .formula import parse
from .graph import Graph, Node
from .library import REFERENCE_LAYERS
from .ops import DEFAULT_EPS, EPS

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


# -- LayerNorm / RMSNorm ---------------------------------------------------------------------------

TOKEN_NORMS = (nn.LayerNorm, nn.RMSNorm)
# the reference formulas equal to the norms they replace (up to eps): their gamma and beta take
# over the replaced norm's weight and bias
_EQUAL_TO = {nn.LayerNorm: REFERENCE_LAYERS["layernorm"], nn.RMSNorm: REFERENCE_LAYERS["rmsnorm"]}


class ChannelsLast(nn.Module):
    """A layer that takes channels on axis 1, applied to channels-last input: tokens (N, L, D)
    or images (N, H, W, C). It sees (N, D, L) (or (N, C, H, W)) and answers in the input's
    layout."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x.movedim(-1, 1)).movedim(1, -1)


def replace_norm(model: nn.Module, layer: LayerSpec, kinds: tuple = TOKEN_NORMS) -> list[str]:
    """Replace every LayerNorm and RMSNorm (or only the `kinds` given) of `model` over one
    (the last) dimension by `layer`, in place; return the qualified names of the norms
    replaced (their number is how many there were; a norm shared by several parents counts
    once and stays shared).

    The new layers sit on the device and dtype of the norm they replace. When the new
    layer is the formula of the replaced norm itself (the reference `layernorm` for a
    LayerNorm, `rmsnorm` for an RMSNorm, whatever its eps), it takes over the norm's eps
    (timm's ViT uses 1e-6, the references 1e-5; an RMSNorm without one, the dtype's
    machine epsilon), and its gamma and beta the norm's learned weight and bias: a
    trained model keeps its outputs. It is then the compiled layer of that formula with
    that eps, even when `layer` was an exported class. Other layers start fresh. Norms
    over several dimensions are left as they are, with a warning."""
    make = layer_factory(layer)
    new: dict[int, nn.Module] = {}
    names: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, kinds) or not isinstance(module, TOKEN_NORMS) or id(module) in new:
            continue
        if len(module.normalized_shape) != 1:
            warnings.warn(f"{name}: {type(module).__name__} over {tuple(module.normalized_shape)} "
                          "normalises several dimensions; left as it is")
            continue
        if module is model:
            raise TypeError("the model is itself a norm: use the layer in its place")
        new[id(module)] = _token_layer(module, make)
        names.append(name)
    for parent in list(model.modules()):
        # every slot, not named_children(), which yields a module held twice by one parent once
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in new:
                setattr(parent, child_name, new[id(child)])
    return names


def _token_layer(norm: nn.Module, make) -> nn.Module:
    """The new layer for one norm: on its device and dtype, the norm's own formula taking
    over its eps, weight and bias, wrapped to see channels on axis 1."""
    channels = norm.normalized_shape[0]
    inner = make(channels)
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    reference = weight if weight is not None else bias
    dtype = reference.dtype if reference is not None else torch.get_default_dtype()
    same = _same_formula(inner, REFERENCE_LAYERS["layernorm" if isinstance(norm, nn.LayerNorm) else "rmsnorm"])
    if same is not None:
        eps = norm.eps if norm.eps is not None else torch.finfo(dtype).eps
        if EPS.check(eps) is None:   # within the language's range: the norm's eps, exactly
            inner = layer_class(_with_eps(same, eps))(channels)
    if reference is not None:
        inner = inner.to(device=reference.device, dtype=reference.dtype)
    if same is not None:
        with torch.no_grad():
            for source, target in ((weight, "gamma"), (bias, "beta")):
                if source is not None and hasattr(inner, target):
                    getattr(inner, target).copy_(source)
    channels_first = type(norm).__name__.lower().endswith("2d")
    return inner if channels_first else ChannelsLast(inner)


def _same_formula(module: nn.Module, formula: str) -> Graph | None:
    """The graph of a generated or exported layer when it computes `formula` up to the eps
    of its moments; else None."""
    text = getattr(type(module), "formula", None)
    if not isinstance(text, str):
        return None
    try:
        graph = parse(text)
    except ValueError:
        return None
    return graph if _with_eps(graph, DEFAULT_EPS) == _with_eps(parse(formula), DEFAULT_EPS) else None


def _with_eps(graph: Graph, eps: float) -> Graph:
    nodes = [Node(n.op, n.inputs, {**n.attrs, "eps": eps}) if "eps" in n.attrs else n for n in graph.nodes]
    return Graph.from_nodes(nodes, graph.output)
