"""Per-head local learning coefficients: one weight-restricted estimate per attention head, in one call."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from slt.estimators.llc import estimate_llc
from slt.sampling import masks
from slt.sampling.losses import LossFn

__all__ = ["llc_per_head"]


def llc_per_head(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: str | LossFn | None = None,
    layers: Sequence[int] | None = None,
    parts: Sequence[str] | str = masks.PARTS,
    return_results: bool = False,
    **estimate_kwargs: Any,
):
    """The weight-restricted LLC of every attention head, each from :func:`slt.estimate_llc`.

    Each head's estimate samples only that head's weights (:func:`slt.masks.head`: its rows or columns
    of the q, k, v and output projections) with the rest of the model held at :math:`w^*`. Every head
    gets the same settings and the same ``seed``; settings slt chooses per run (the default step size,
    the automatic length) are chosen per head and reported in the table.

    Parameters
    ----------
    model : nn.Module
        A GPT-2, Llama, Mistral, Qwen2 or GPT-NeoX model from ``transformers``
        (:data:`slt.masks.ARCHITECTURES`); it is left exactly as it was.
    data, loss_fn
        As for :func:`slt.estimate_llc` (``loss_fn=None``, the default, uses the model's own loss, e.g.
        ``{"input_ids": ids, "labels": ids}`` for a causal language model).
    layers : sequence of int, optional
        Only these layers (default every layer).
    parts : sequence of {"q", "k", "v", "o"}
        Which projections of each head are sampled (default all four).
    return_results : bool
        Also return every head's :class:`slt.LLCResult` (traces, diagnostics, settings).
    **estimate_kwargs
        Passed to every :func:`slt.estimate_llc` call (``num_chains``, ``num_draws``, ``step_size``,
        ``seed``, ...); ``mask`` is not allowed (each head sets its own).

    Returns
    -------
    pandas.DataFrame
        One row per head in ``(layer, head)`` order: ``layer``, ``head``, ``sampled`` (weights sampled),
        then :meth:`LLCResult.summary`'s columns (``llc_mean``, ``llc_stderr``, ``llc_low``/``llc_high``
        the 95% interval, ``ess``, ``rhat``, ``step_size``, ...) with ``problems`` replaced by
        ``warnings``: every warning the head's estimate raised, ``"Category: message"`` joined by ``"; "``
        (empty for a clean run).
    dict of (int, int) to LLCResult
        Only with ``return_results=True``: each head's result, keyed by ``(layer, head)``.

    Warns
    -----
    slt.warnings.SLTWarning
        The heads' warnings are caught and, after the last head, raised again once per warning class,
        naming the heads that raised it (the messages are in the ``warnings`` column).

    Raises
    ------
    ValueError
        For an unknown architecture (build masks with :func:`slt.masks.matching` and call
        :func:`slt.estimate_llc` yourself), an empty ``layers`` or a layer out of range, unknown parts,
        or any error of :func:`slt.estimate_llc` (which stops the loop: earlier heads are lost).
    TypeError
        If ``mask`` is among ``estimate_kwargs``.
    """
    import pandas as pd

    if "mask" in estimate_kwargs:
        raise TypeError("llc_per_head sets each head's mask itself; call slt.estimate_llc for a single mask")
    chosen = range(masks.num_layers(model)) if layers is None else list(layers)
    if not chosen:
        raise ValueError("layers is empty; pass layer indices, or layers=None for every layer")
    for i in chosen:
        masks.head(model, i, 0, parts)  # refuses bad layers and parts before any run
    # one head's mask at a time: all of them together hold a bool per attention weight per head
    per_head = [(i, h) for i in chosen for h in range(masks.num_heads(model))]
    rows, results, caught_by_class = [], {}, {}
    for i, h in per_head:
        mask = masks.head(model, i, h, parts)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = estimate_llc(model, data, loss_fn=loss_fn, mask=mask, **estimate_kwargs)
        summary = result.summary().iloc[0].to_dict()
        summary.pop("problems", None)
        messages = [f"{w.category.__name__}: {w.message}" for w in caught]
        for w in caught:
            caught_by_class.setdefault(w.category, []).append(f"L{i}H{h}")
        sampled = sum(int(m.sum()) for m in mask.values())
        rows.append({"layer": i, "head": h, "sampled": sampled, **summary, "warnings": "; ".join(messages)})
        results[(i, h)] = result
    frame = pd.DataFrame(rows)
    for category, where in caught_by_class.items():
        where = list(dict.fromkeys(where))
        warnings.warn(
            f"{len(where)} of {len(per_head)} head estimates raised {category.__name__} "
            f"({', '.join(where)}); the messages are in the table's warnings column",
            category,
            stacklevel=2,
        )
    return (frame, results) if return_results else frame
