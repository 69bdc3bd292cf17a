r"""What the sample size :math:`n` counts: samples (rows of the data) or tokens.

:math:`n` sets the default inverse temperature :math:`n\beta = n / \log n` and so scales every estimate.
The posterior :math:`\exp(-n\beta L_n(w))` at :math:`\beta = 1` is the Bayesian posterior only when
:math:`n L_n` is the negative log-likelihood of the whole data: :math:`n` must count the terms that the
mean loss :math:`L_n` averages over. A language model's loss is the mean cross-entropy per *token*, so
for sequence data those terms are the predicted tokens; counting sequences instead makes the posterior
hotter by the number of tokens per sequence (see the docs page "n for sequence data").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slt.sampling.data import batch_length
from slt.sampling.losses import IGNORE_INDEX

__all__ = [
    "N_UNITS",
    "UnitCounter",
    "check_n",
    "resolve_n_unit",
    "shifts_labels",
    "labels_are_inputs",
    "is_token_sequences",
    "count_tokens",
]

#: The accepted values of ``n_unit``; ``"auto"`` resolves to one of the other two.
N_UNITS = ("auto", "samples", "tokens")


def resolve_n_unit(n_unit: str, batch: Any) -> str:
    """``"samples"`` or ``"tokens"``: ``n_unit`` itself, or for ``"auto"`` what ``batch`` calls for.

    ``"auto"`` counts tokens for token data: a dict batch with ``input_ids`` (the layout of a
    tokenizer's output and of Hugging Face language models), or an ``(inputs, targets)`` pair of integer
    tensors of one shape ``(sequences, positions)`` (token ids and a label per position) or such ids
    alone, ``(ids,)`` (see :func:`is_token_sequences`); samples otherwise (a classifier's or a
    regression's rows).

    Raises
    ------
    ValueError
        For a value outside :data:`N_UNITS`.
    """
    if n_unit not in N_UNITS:
        raise ValueError(
            f"n_unit must be one of {N_UNITS}, got {n_unit!r}: 'samples' counts the rows of the data "
            "(sequences), 'tokens' the tokens the loss averages over"
        )
    if n_unit != "auto":
        return n_unit
    if isinstance(batch, Mapping) and "input_ids" in batch:
        return "tokens"
    return "tokens" if is_token_sequences(batch) else "samples"


def is_token_sequences(batch: Any) -> bool:
    """Whether a tuple batch holds token sequences: ``(ids,)`` or ``(ids, labels)`` of integer ``(B, T)``.

    Token ids of shape ``(sequences, positions)``, ``positions > 1``, alone (a model or loss that predicts
    each token from the ones before it, as devinterp's language-model examples take them) or with a
    label per position of the same shape (the next token, or the ids again for a model that shifts them),
    as a language model written by hand takes them. A classifier's integer inputs have targets of one
    dimension (one label per row), so they do not match.
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) in (1, 2)):
        return False
    ids = batch[0]
    if not (isinstance(ids, Tensor) and _is_integer(ids) and ids.ndim == 2 and ids.shape[1] > 1):
        return False
    if len(batch) == 1:
        return True
    labels = batch[1]
    return isinstance(labels, Tensor) and _is_integer(labels) and labels.shape == ids.shape


def _is_integer(tensor: Tensor) -> bool:
    return not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool


def labels_are_inputs(batch: Any) -> bool:
    """Whether the batch's labels are its token ids themselves, so the model must shift them to predict.

    A dict's ``labels`` equal to its ``input_ids``, token ids alone ``(ids,)``, or a pair
    ``(ids, labels)`` (:func:`is_token_sequences`) whose labels equal the ids. A model that compared
    each position's output with that position's own token would learn to copy its input; the model (or
    its loss) predicts token t from the tokens before it, and each sequence's first label is never
    predicted, as for Hugging Face causal language models.
    """
    if isinstance(batch, Mapping):
        ids, labels = batch.get("input_ids"), batch.get("labels")
        return (
            isinstance(ids, Tensor)
            and isinstance(labels, Tensor)
            and ids.ndim == 2
            and ids.shape == labels.shape
            and bool(torch.equal(ids, labels))
        )
    if not is_token_sequences(batch):
        return False
    return len(batch) == 1 or bool(torch.equal(batch[0], batch[1]))


def shifts_labels(model: nn.Module) -> bool:
    """Whether ``model`` predicts each label from the tokens before it, so a sequence's first label is unused.

    True for Hugging Face causal language models (class names ending in ``ForCausalLM`` or
    ``LMHeadModel``), whose loss compares ``logits[:, :-1]`` with ``labels[:, 1:]``.
    """
    name = type(model).__name__
    return name.endswith(("ForCausalLM", "LMHeadModel"))


def count_tokens(batch: Any, shift: bool = False) -> int:
    """The number of tokens the loss averages over in ``batch``.

    Parameters
    ----------
    batch : dict or tuple of Tensor
        A dict counts its ``labels`` other than -100 (the positions a Hugging Face loss skips), else
        the ones of its ``attention_mask``, else the entries of its ``input_ids``; a tuple
        ``(inputs, targets)`` counts the targets' entries other than -100, token ids alone ``(ids,)``
        their entries.
    shift : bool
        Leave out the first position of every sequence (causal language models, see
        :func:`shifts_labels` and :func:`labels_are_inputs`).

    Raises
    ------
    ValueError
        When the batch holds none of these, naming the fix (``n_unit="samples"`` or an explicit ``n``).
    """
    tokens: Tensor | None = None
    mask = False
    if isinstance(batch, Mapping):
        for key, is_mask in (("labels", False), ("attention_mask", True), ("input_ids", False)):
            if isinstance(batch.get(key), Tensor):
                tokens, mask = batch[key], is_mask
                break
        if key == "input_ids" and tokens is not None:  # every position counts
            tokens, mask = torch.ones_like(tokens), True
    elif isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Tensor):
        tokens = batch[1]
    elif is_token_sequences(batch):  # (ids,): every position counts
        tokens, mask = torch.ones_like(batch[0]), True
    if tokens is None:
        raise ValueError(
            f"n_unit='tokens' cannot tell how many tokens a batch of type {type(batch).__name__} holds "
            "(it reads 'labels', 'attention_mask' or 'input_ids' of a dict, or the targets of an "
            "(inputs, targets) pair). Pass n= yourself, or n_unit='samples'"
        )
    if shift and tokens.ndim >= 2:
        tokens = tokens[:, 1:]
    if mask:
        return int(tokens.sum())
    if tokens.is_floating_point():
        return int(tokens.numel())
    return int((tokens != IGNORE_INDEX).sum())


class UnitCounter:
    """Counts ``n_unit`` in a batch: ``counter(batch) -> int``; ``"auto"`` is resolved on the first batch.

    Attributes
    ----------
    unit : str
        ``"samples"`` or ``"tokens"`` once a batch was counted (``n_unit`` itself before, when explicit).
    shift : bool
        Whether each sequence's first label is left out: for a causal language model by its class name
        (:func:`shifts_labels`), or, decided on the first batch, for labels that are the token ids
        themselves (:func:`labels_are_inputs`) unless the loss compares every position with its own
        label (``labels_per_position``, slt's built-in ``"cross_entropy"``: a model trained that way
        on labels equal to its inputs copies them, and every position is a term of the loss).
    """

    def __init__(self, n_unit: str, model: nn.Module, *, labels_per_position: bool = False):
        self.requested = n_unit
        self.unit = resolve_n_unit(n_unit, None) if n_unit != "auto" else "auto"
        self.shift = shifts_labels(model)
        self._labels_per_position = labels_per_position
        self._first = True

    def __call__(self, batch: Any) -> int:
        """The number of units in ``batch``."""
        if self.unit == "auto":
            self.unit = resolve_n_unit("auto", batch)
        if self._first:
            self._first = False
            self.shift = self.shift or (not self._labels_per_position and labels_are_inputs(batch))
        if self.unit == "samples":
            return batch_length(batch)
        return count_tokens(batch, self.shift)


def check_n(n: Any) -> None:
    """Refuse an ``n`` that is neither ``None`` nor a positive integer.

    Raises
    ------
    ValueError
        Naming the value and what ``n`` means.
    """
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(
            f"n must be a positive integer (the size of the training data in n_unit), got {n!r}; leave it "
            "None to count the data"
        )
