r"""Weight restrictions by name: masks for layers, attention heads, MLPs and embeddings.

Each builder returns an slt mask, a ``dict`` from parameter name to a boolean tensor of that parameter's
shape (on the parameter's device), that :func:`slt.estimate_llc` accepts as ``mask=`` to estimate a
weight-restricted LLC. Only trainable parameters (``requires_grad=True``) appear, because only they can
be sampled; the model is read and never changed.

The architecture is read from ``config.model_type`` of the model (or of its first submodule that has a
Hugging Face ``config``). The layouts, taken from the attention ``forward`` of each model in
``transformers`` (they are the same in 4.x and 5.x):

``gpt2``
    Blocks ``h.<i>``. ``attn.c_attn`` is a ``Conv1D`` with weight ``(hidden, 3 * hidden)`` (input,
    output): its output is ``[q | k | v]``, each ``hidden`` wide, head ``h`` in columns
    ``h * head_dim : (h + 1) * head_dim`` of each; the bias ``(3 * hidden,)`` follows the same columns.
    ``attn.c_proj`` (weight ``(hidden, hidden)``) takes the heads' outputs concatenated, so head ``h``
    owns its rows ``h * head_dim : (h + 1) * head_dim``.
``llama``, ``mistral``, ``qwen2``
    Blocks ``layers.<i>``. ``self_attn.q_proj`` (``nn.Linear``, weight ``(heads * head_dim, hidden)``):
    head ``h`` owns rows ``h * head_dim : (h + 1) * head_dim``. ``k_proj`` and ``v_proj`` have
    ``num_key_value_heads`` heads; query head ``h`` reads key/value head ``h // (heads / kv_heads)``,
    whose rows it shares with the other query heads of its group. ``o_proj`` (weight
    ``(hidden, heads * head_dim)``): head ``h`` owns columns ``h * head_dim : (h + 1) * head_dim``.
``gpt_neox`` (Pythia)
    Blocks ``layers.<i>``. ``attention.query_key_value`` (weight ``(3 * hidden, hidden)``) is
    interleaved per head: rows ``3 * head_dim * h`` onwards hold head ``h``'s q, then k, then v, each
    ``head_dim`` rows; the bias follows the rows. ``attention.dense``: head ``h`` owns columns
    ``h * head_dim : (h + 1) * head_dim``.

Biases are included where they belong to one head (q, k, v biases); the output projection's bias is
shared by all heads and belongs to :func:`attention` and :func:`layer`, not to :func:`head`. Any other
model is served by :func:`matching`, which selects whole parameters by name pattern.

Examples
--------
>>> from slt import masks                                           # doctest: +SKIP
>>> m = masks.head(model, layer=0, head=1)                          # q, k, v and o of one head
>>> print(masks.describe(model, m))                                 # what would be sampled
>>> slt.estimate_llc(model, data, loss_fn=loss_fn, mask=m)
>>> masks.union(masks.mlp(model, 1), masks.matching(model, "*.ln_2.*"))
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from slt.sampling.flat import Mask, select_parameters

__all__ = [
    "ARCHITECTURES",
    "PARTS",
    "architecture",
    "attention",
    "describe",
    "embeddings",
    "head",
    "heads",
    "layer",
    "matching",
    "mlp",
    "num_heads",
    "num_layers",
    "union",
]

#: The parts of an attention head :func:`head` can select.
PARTS = ("q", "k", "v", "o")


@dataclass(frozen=True)
class _Layout:
    style: str  # "gpt2" (fused Conv1D), "gpt_neox" (fused, interleaved per head) or "llama" (separate)
    blocks: str  # name of the ModuleList of blocks (its last dotted component)
    attention: str  # block-relative prefix of the attention module
    mlp: str  # block-relative prefix of the MLP
    fused: str | None  # fused q/k/v projection, attention-relative (None: separate q/k/v)
    qkv: tuple[str, str, str]  # separate q/k/v projections, attention-relative
    out: str  # output projection, attention-relative
    positional: tuple[str, ...] = ()  # learned position embeddings, names relative to the config's module


_LLAMA = _Layout("llama", "layers", "self_attn", "mlp", None, ("q_proj", "k_proj", "v_proj"), "o_proj")
_LAYOUTS = {
    "gpt2": _Layout("gpt2", "h", "attn", "mlp", "c_attn", ("", "", ""), "c_proj", positional=("wpe",)),
    "gpt_neox": _Layout("gpt_neox", "layers", "attention", "mlp", "query_key_value", ("", "", ""), "dense"),
    "llama": _LLAMA,
    "mistral": _LLAMA,  # the same attention and names as Llama (transformers' MistralAttention)
    "qwen2": _LLAMA,  # the same, with q/k/v biases (Qwen2Attention)
}

#: Architectures (``config.model_type``) whose layers, heads, MLPs and embeddings are known by name.
ARCHITECTURES = tuple(sorted(_LAYOUTS))


@dataclass(frozen=True)
class _Model:
    """What the builders need to know about one model."""

    model_type: str
    layout: _Layout
    params: dict[str, nn.Parameter]  # trainable parameters, model order
    block_prefixes: tuple[str, ...]  # full module names of the blocks, in order
    base: str  # full module name of the module holding the config ("" for the model itself)
    base_module: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int


def _config_module(model: nn.Module) -> tuple[str, nn.Module] | None:
    for name, module in model.named_modules():
        if isinstance(getattr(getattr(module, "config", None), "model_type", None), str):
            return name, module
    return None


def _inspect(model: nn.Module) -> _Model:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found = _config_module(model)
    if found is None:
        raise ValueError(
            f"cannot tell the architecture of {type(model).__name__}: it has no Hugging Face config with a "
            f"model_type (known: {', '.join(ARCHITECTURES)}); select parameters by name with "
            "slt.masks.matching(model, pattern) instead"
        )
    base, module = found
    config = module.config
    model_type = config.model_type
    if model_type not in _LAYOUTS:
        raise ValueError(
            f"no head/layer layout is known for model_type {model_type!r} "
            f"(known: {', '.join(ARCHITECTURES)}); select parameters by name with "
            "slt.masks.matching(model, pattern) instead, for example matching(model, '*.layers.0.mlp.*')"
        )
    layout = _LAYOUTS[model_type]
    blocks = [
        name
        for name, m in module.named_modules(prefix=base)
        if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] == layout.blocks
    ]
    if len(blocks) != 1:
        raise ValueError(
            f"expected one list of {model_type} blocks named {layout.blocks!r} in the model, found "
            f"{len(blocks)} ({blocks}); select parameters by name with slt.masks.matching instead"
        )
    container = model.get_submodule(blocks[0])
    block_prefixes = tuple(f"{blocks[0]}.{i}" for i in range(len(container)))
    num_heads = int(config.num_attention_heads)
    hidden = int(config.hidden_size)
    head_dim = getattr(config, "head_dim", None) or hidden // num_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} attention heads do not divide into {num_kv_heads} key/value heads")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return _Model(
        model_type, layout, params, block_prefixes, base, module, num_heads, int(num_kv_heads), int(head_dim)
    )


def architecture(model: nn.Module) -> str:
    """The architecture of ``model`` as the builders see it (``config.model_type``, for example ``"gpt2"``).

    Raises
    ------
    ValueError
        If the model has no Hugging Face config, or its ``model_type`` is not one of :data:`ARCHITECTURES`.
    """
    return _inspect(model).model_type


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks of ``model`` (counted in the model, not read from its config)."""
    return len(_inspect(model).block_prefixes)


def num_heads(model: nn.Module) -> int:
    """Number of (query) attention heads per layer of ``model``."""
    return _inspect(model).num_heads


# ---------------------------------------------------------------------------------------------- helpers


def _block(info: _Model, layer: int) -> str:
    n = len(info.block_prefixes)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int, got {type(layer).__name__}")
    if not 0 <= layer < n:
        raise ValueError(f"layer {layer} is out of range: the model has {n} layers, numbered 0 to {n - 1}")
    return info.block_prefixes[layer]


def _under(info: _Model, prefix: str) -> dict[str, Tensor]:
    return {
        n: torch.ones_like(p, dtype=torch.bool) for n, p in info.params.items() if n.startswith(prefix + ".")
    }


def _nonempty(mask: dict[str, Tensor], what: str) -> dict[str, Tensor]:
    mask = {n: m for n, m in mask.items() if bool(m.any())}
    if not mask:
        raise ValueError(
            f"{what} selects no trainable parameter entries (are its parameters frozen with "
            "requires_grad=False?); unfreeze them or choose other parameters"
        )
    return mask


def _rows(param: nn.Parameter, spans: Iterable[tuple[int, int]], dim: int) -> Tensor:
    m = torch.zeros_like(param, dtype=torch.bool)
    for start, stop in spans:
        m.narrow(dim, start, stop - start).fill_(True)
    return m


def _add(mask: dict[str, Tensor], info: _Model, name: str, spans: list[tuple[int, int]], dim: int) -> None:
    param = info.params.get(name)
    if param is None:
        return  # frozen, or a bias this model does not have
    m = _rows(param, spans, dim)
    mask[name] = mask[name] | m if name in mask else m


def _check_parts(parts: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(parts, str):
        parts = (parts,)
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown head parts {unknown}; parts are chosen from {PARTS}")
    if not parts:
        raise ValueError(f"parts is empty; choose some of {PARTS}")
    return parts


def _check_shape(info: _Model, name: str, dim: int, expected: int, what: str) -> None:
    param = info.params.get(name)
    if param is not None and param.shape[dim] != expected:
        raise ValueError(
            f"{name} has shape {tuple(param.shape)}, but a {info.model_type} {what} with {info.num_heads} "
            f"heads of size {info.head_dim} needs {expected} along dimension {dim}; the model does not have "
            "the layout its config describes, so select parameters with slt.masks.matching instead"
        )


# ---------------------------------------------------------------------------------------------- builders


def head(model: nn.Module, layer: int, head: int, parts: Sequence[str] | str = PARTS) -> dict[str, Tensor]:
    """The weights of one attention head: its rows or columns of the q, k, v and output projections.

    Parameters
    ----------
    model : nn.Module
        A GPT-2, Llama, Mistral, Qwen2 or GPT-NeoX model from ``transformers`` (:data:`ARCHITECTURES`),
        or a module that contains one.
    layer : int
        Block index, ``0 <= layer < num_layers(model)``.
    head : int
        Query-head index, ``0 <= head < num_heads(model)``.
    parts : sequence of {"q", "k", "v", "o"}
        Which projections; default all four. The q, k and v biases come with their parts; the output
        projection's bias, shared by all heads, never does. With grouped-query attention (Llama with
        ``num_key_value_heads < num_attention_heads``) ``"k"`` and ``"v"`` select the key/value head
        this query head reads, which the other query heads of its group read too.

    Returns
    -------
    dict of str to bool Tensor
        Parameter name to a mask of the parameter's shape; see the module docstring for the layouts.

    Raises
    ------
    ValueError
        For an unknown architecture (use :func:`matching`), ``layer`` or ``head`` out of range, unknown
        or empty ``parts``, or if every selected parameter is frozen.
    """
    info = _inspect(model)
    block = _block(info, layer)
    parts = _check_parts(parts)
    if isinstance(head, bool) or not isinstance(head, int):
        raise TypeError(f"head must be an int, got {type(head).__name__}")
    if not 0 <= head < info.num_heads:
        raise ValueError(
            f"head {head} is out of range: layer {layer} has {info.num_heads} heads, numbered 0 to "
            f"{info.num_heads - 1}"
        )
    lay, d, H = info.layout, info.head_dim, info.num_heads
    attn = f"{block}.{lay.attention}"
    mask: dict[str, Tensor] = {}
    own = [(head * d, (head + 1) * d)]
    if lay.style == "gpt2":
        qkv = f"{attn}.{lay.fused}"
        _check_shape(info, f"{qkv}.weight", 1, 3 * H * d, "c_attn")
        offsets = {"q": 0, "k": H * d, "v": 2 * H * d}
        spans = [(offsets[p] + head * d, offsets[p] + (head + 1) * d) for p in parts if p in offsets]
        if spans:
            _add(mask, info, f"{qkv}.weight", spans, 1)  # Conv1D: (in, out)
            _add(mask, info, f"{qkv}.bias", spans, 0)
        if "o" in parts:
            _check_shape(info, f"{attn}.{lay.out}.weight", 0, H * d, "c_proj")
            _add(mask, info, f"{attn}.{lay.out}.weight", own, 0)  # Conv1D rows are its inputs
    elif lay.style == "gpt_neox":
        qkv = f"{attn}.{lay.fused}"
        _check_shape(info, f"{qkv}.weight", 0, 3 * H * d, "query_key_value")
        offsets = {"q": 0, "k": d, "v": 2 * d}
        spans = [(3 * d * head + offsets[p], 3 * d * head + offsets[p] + d) for p in parts if p in offsets]
        if spans:
            _add(mask, info, f"{qkv}.weight", spans, 0)  # nn.Linear: (out, in)
            _add(mask, info, f"{qkv}.bias", spans, 0)
        if "o" in parts:
            _check_shape(info, f"{attn}.{lay.out}.weight", 1, H * d, "dense")
            _add(mask, info, f"{attn}.{lay.out}.weight", own, 1)
    else:  # separate q/k/v projections, nn.Linear (out, in), grouped-query attention
        kv = head // (H // info.num_kv_heads)
        kv_span = [(kv * d, (kv + 1) * d)]
        for part, proj, count in zip("qkv", lay.qkv, (H, info.num_kv_heads, info.num_kv_heads)):
            if part in parts:
                _check_shape(info, f"{attn}.{proj}.weight", 0, count * d, proj)
                span = own if part == "q" else kv_span
                _add(mask, info, f"{attn}.{proj}.weight", span, 0)
                _add(mask, info, f"{attn}.{proj}.bias", span, 0)
        if "o" in parts:
            _check_shape(info, f"{attn}.{lay.out}.weight", 1, H * d, lay.out)
            _add(mask, info, f"{attn}.{lay.out}.weight", own, 1)
    return _nonempty(mask, f"head {head} of layer {layer} ({'/'.join(parts)})")


def heads(model: nn.Module, parts: Sequence[str] | str = PARTS) -> dict[tuple[int, int], dict[str, Tensor]]:
    """:func:`head` masks for every head of every layer, keyed by ``(layer, head)`` in order.

    Every mask holds a boolean per entry of each attention parameter it touches, so on a large model
    this is layers x heads x the attention's size in booleans; build one :func:`head` at a time there
    (as :func:`slt.llc_per_head` does).
    """
    info = _inspect(model)
    return {
        (i, h): head(model, i, h, parts)
        for i in range(len(info.block_prefixes))
        for h in range(info.num_heads)
    }


def layer(model: nn.Module, layer: int) -> dict[str, Tensor]:
    """Every trainable parameter of one transformer block (attention, MLP and its norms).

    Raises
    ------
    ValueError
        For an unknown architecture, ``layer`` out of range, or a block whose parameters are all frozen.
    """
    info = _inspect(model)
    block = _block(info, layer)
    return _nonempty(_under(info, block), f"layer {layer}")


def attention(model: nn.Module, layer: int) -> dict[str, Tensor]:
    """The whole attention module of one block: every head and the output projection's bias.

    Raises
    ------
    ValueError
        As :func:`layer`.
    """
    info = _inspect(model)
    block = _block(info, layer)
    return _nonempty(_under(info, f"{block}.{info.layout.attention}"), f"the attention of layer {layer}")


def mlp(model: nn.Module, layer: int) -> dict[str, Tensor]:
    """The MLP of one block (GPT-2 ``c_fc``/``c_proj``, Llama ``gate``/``up``/``down``, NeoX ``dense_*``).

    Raises
    ------
    ValueError
        As :func:`layer`.
    """
    info = _inspect(model)
    block = _block(info, layer)
    return _nonempty(_under(info, f"{block}.{info.layout.mlp}"), f"the MLP of layer {layer}")


def embeddings(model: nn.Module, *, unembedding: bool = False) -> dict[str, Tensor]:
    """The token embedding, learned position embeddings (GPT-2's ``wpe``) and, optionally, the unembedding.

    Parameters
    ----------
    model : nn.Module
    unembedding : bool
        Also the output layer (``lm_head``). When it is tied to the token embedding (GPT-2 by default)
        it is the same parameter, which is then selected either way.

    Raises
    ------
    ValueError
        For an unknown architecture or if every selected parameter is frozen.
    """
    info = _inspect(model)
    base = info.base_module
    wanted: list[nn.Parameter] = []
    modules = [base.get_input_embeddings()]
    modules += [base.get_submodule(_find(base, n)) for n in info.layout.positional]
    if unembedding:
        out = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        if out is None:
            raise ValueError(f"{type(base).__name__} has no output layer; call embeddings(model) without it")
        modules.append(out)
    for m in modules:
        wanted += list(m.parameters())
    ids = {id(p) for p in wanted}
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in info.params.items() if id(p) in ids}
    return _nonempty(mask, "the embeddings")


def _find(base: nn.Module, suffix: str) -> str:
    names = [n for n, _ in base.named_modules() if n.rsplit(".", 1)[-1] == suffix]
    if len(names) != 1:
        raise ValueError(f"expected one module named {suffix!r}, found {names}")
    return names[0]


def matching(model: nn.Module, *patterns: str | re.Pattern[str]) -> dict[str, Tensor]:
    r"""Whole parameters whose names match any of ``patterns``: the fallback for any architecture.

    Parameters
    ----------
    model : nn.Module
        Any module.
    *patterns : str or re.Pattern
        A string is a shell-style glob over the full parameter name (``"*.mlp.*"``,
        ``"transformer.h.[01].attn.*"``, as :func:`fnmatch.fnmatchcase`); a compiled regular
        expression (``re.compile(r"layers\.\d+\.mlp")``) selects the names it finds anywhere
        (:meth:`re.Pattern.search`).

    Raises
    ------
    ValueError
        If no pattern is given, or a pattern matches no trainable parameter (the message lists some).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not patterns:
        raise ValueError("give at least one pattern, for example matching(model, '*.mlp.*')")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    chosen: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, re.Pattern):
            hits = {n for n in params if pattern.search(n)}
        elif isinstance(pattern, str):
            hits = {n for n in params if fnmatch.fnmatchcase(n, pattern)}
        else:
            raise TypeError(f"a pattern is a glob string or a compiled regex, got {type(pattern).__name__}")
        if not hits:
            shown = list(params)[:8]
            more = f" and {len(params) - 8} more" if len(params) > 8 else ""
            raise ValueError(
                f"pattern {getattr(pattern, 'pattern', pattern)!r} matches no trainable parameter; names are "
                f"like {shown}{more} (a glob must match the whole name: try '*{pattern}*' if a string)"
            )
        chosen |= hits
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items() if n in chosen}


def union(*masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Entries selected by any of ``masks`` (dicts from parameter name to bool tensor).

    Raises
    ------
    ValueError
        If no mask is given, or two masks disagree on a parameter's shape.
    TypeError
        If a mask is not a dict (a list of names can be turned into one with :func:`matching`).
    """
    if not masks:
        raise ValueError("union needs at least one mask")
    out: dict[str, Tensor] = {}
    for m in masks:
        if not isinstance(m, Mapping):
            raise TypeError(
                f"union takes dict masks (name -> bool tensor), got {type(m).__name__}; "
                "build one from names with slt.masks.matching(model, name + '*')"
            )
        for name, entries in m.items():
            entries = torch.as_tensor(entries).bool()
            if name in out:
                if out[name].shape != entries.shape:
                    raise ValueError(
                        f"masks disagree on the shape of {name!r}: {tuple(out[name].shape)} and "
                        f"{tuple(entries.shape)}"
                    )
                out[name] = out[name] | entries.to(out[name].device)
            else:
                out[name] = entries.clone()
    return out


def describe(model: nn.Module, mask: Mask) -> Any:
    """What ``estimate_llc(model, ..., mask=mask)`` would sample, parameter by parameter.

    The mask is interpreted by the same function the estimators use, so the preview cannot disagree
    with the run; any mask the estimators accept is accepted (``None``, names, prefixes or a dict).

    Returns
    -------
    pandas.DataFrame
        One row per sampled parameter, in model order, with columns ``parameter``, ``shape``,
        ``sampled`` (entries that move), ``size`` (entries of the parameter) and ``fraction``; a last
        row ``"total"`` sums them, its ``size`` and ``fraction`` relative to every trainable parameter.

    Raises
    ------
    ValueError
        As the estimators do: unknown parameter names, wrong shapes, a mask that selects nothing.
    """
    import pandas as pd

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, partial = select_parameters(named, mask)
    params = dict(named)
    rows = []
    for name in names:
        size = params[name].numel()
        sampled = int(partial[name].sum()) if name in partial else size
        rows.append({"parameter": name, "shape": tuple(params[name].shape), "sampled": sampled, "size": size})
    total = sum(p.numel() for _, p in named)
    rows.append(
        {"parameter": "total", "shape": (), "sampled": sum(r["sampled"] for r in rows), "size": total}
    )
    frame = pd.DataFrame(rows)
    frame["fraction"] = frame["sampled"] / frame["size"]
    return frame
