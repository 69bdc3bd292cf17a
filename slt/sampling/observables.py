r"""Per-sample observables: the loss of each sample of a fixed probe set, at every draw.

An observable is any ``fn(model)`` evaluated on the sampled model at each draw (see
:meth:`slt.sampling.PosteriorSampler.run`); its values are stored with shape ``(chains, draws, ...)``.
:class:`PerSampleLoss` is the observable behind Bayesian influence functions
(:func:`slt.estimators.bif.bif`): it returns :math:`\ell_i(w)` for every sample ``i`` of a probe set, so the
run stores ``(chains, draws, samples)``, or ``(chains, draws, samples, tokens)`` for per-token losses of a
sequence model.

The probe set is fixed (the same samples at every draw and chain): correlations across draws need the
same samples each time, which a minibatch does not give.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PerSampleLoss",
    "PerSampleLossFn",
    "per_sample_mse",
    "per_sample_cross_entropy",
    "per_token_causal_lm",
]

#: ``fn(model, batch) -> Tensor`` of shape ``(samples,)`` or ``(samples, tokens)``: one loss per sample.
PerSampleLossFn = Callable[[nn.Module, Any], Tensor]


def _pair(batch: Any, name: str) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(
            f'per-sample loss "{name}" expects a probe set (inputs, targets); got {type(batch).__name__}. '
            "Pass a callable per_sample_loss(model, batch) for other layouts"
        )
    return batch[0], batch[1]


def per_sample_mse(model: nn.Module, batch: Any) -> Tensor:
    """Squared error of each sample, averaged over its output entries: shape ``(samples,)``.

    Its mean over the samples is ``F.mse_loss`` (slt's ``"mse"``), so the two agree.

    Raises
    ------
    ValueError
        When the outputs and targets differ in shape (they would be broadcast).
    """
    x, y = _pair(batch, "mse")
    out = model(x)
    if out.shape != y.shape:
        raise ValueError(
            f'per-sample loss "mse": the model\'s outputs have shape {tuple(out.shape)} but the targets '
            f"{tuple(y.shape)}; give the targets the outputs' shape"
        )
    return ((out - y) ** 2).reshape(out.shape[0], -1).mean(dim=1)


def per_sample_cross_entropy(model: nn.Module, batch: Any) -> Tensor:
    """Cross-entropy of each sample (or token), with the targets as class indices.

    Shape ``(samples,)`` for logits ``(samples, classes)``; ``(samples, tokens)`` for sequence logits
    ``(samples, tokens, classes)`` with targets ``(samples, tokens)``.

    Raises
    ------
    ValueError
        When the logits and targets do not fit either layout.
    """
    x, y = _pair(batch, "cross_entropy")
    logits = model(x)
    if logits.ndim == 2 and y.ndim == 1:
        return F.cross_entropy(logits, y, reduction="none")
    if logits.ndim == 3 and y.shape == logits.shape[:2]:
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").reshape(y.shape)
    raise ValueError(
        f'per-sample loss "cross_entropy": logits of shape {tuple(logits.shape)} and targets of shape '
        f"{tuple(y.shape)} fit neither (samples, classes) with (samples,) nor (samples, tokens, classes) "
        "with (samples, tokens); pass a callable per_sample_loss(model, batch)"
    )


def per_token_causal_lm(model: nn.Module, batch: Any) -> Tensor:
    """Next-token cross-entropy of every predicted position of a causal language model.

    ``batch`` is ``(input_ids,)`` (or a bare ``input_ids`` tensor), shape ``(samples, length)``; the
    model is called as ``model(input_ids)`` and its ``.logits`` (or the output itself) taken. Position
    ``t`` of the result is the loss of token ``t + 1`` given the tokens before it, so the result has shape
    ``(samples, length - 1)``: the loss Hugging Face's ``model(input_ids, labels=input_ids).loss`` averages
    (without ``-100`` labels), and devinterp 2.0.1's ``compute_per_token_loss``.

    Raises
    ------
    ValueError
        For token ids that are not a 2-d integer tensor of at least two positions, or logits that are not
        ``(samples, length, vocabulary)``.
    """
    ids = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 1 else batch
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.dtype.is_floating_point or ids.shape[1] < 2:
        got = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(
            'per-sample loss "causal_lm" expects a probe set (input_ids,) of integer token ids, shape '
            f"(samples, length >= 2); got {got}"
        )
    # Hugging Face models: no key/value cache (a forward pass, not generation)
    options = (
        {"use_cache": False} if getattr(getattr(model, "config", None), "use_cache", None) is not None else {}
    )
    out = model(ids, **options)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, Tensor) or logits.ndim != 3 or logits.shape[:2] != ids.shape:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f'per-sample loss "causal_lm": expected logits of shape {tuple(ids.shape)} + (vocabulary,), got '
            f"{got}"
        )
    shifted = logits[:, :-1].float()
    return F.cross_entropy(shifted.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").reshape(
        ids.shape[0], -1
    )


_SHORTCUTS: dict[str, PerSampleLossFn] = {
    "mse": per_sample_mse,
    "cross_entropy": per_sample_cross_entropy,
    "causal_lm": per_token_causal_lm,
}


class PerSampleLoss:
    r"""Observable: the loss :math:`\ell_i(w)` of each sample of a fixed probe set on the sampled model.

    Pass it in ``observables`` of :func:`slt.estimate_llc` (or :meth:`~slt.sampling.PosteriorSampler.run`);
    the result then holds an array of shape ``(chains, draws, samples)`` (``(chains, draws, samples,
    tokens)`` for per-token losses) under its name, which :func:`slt.estimators.bif.bif` turns into
    influences. It is evaluated once at :math:`w^*` before sampling, so a wrong probe set or loss fails at
    once, with the observable's name.

    Parameters
    ----------
    probe : tuple or list of Tensor
        The probe samples, each tensor with the samples along its first axis (for example ``(x, y)``:
        training samples, held-out samples or both). Moved to the model's device once.
    loss_fn : {"mse", "cross_entropy", "causal_lm"} or callable
        The per-sample loss: :func:`per_sample_mse`, :func:`per_sample_cross_entropy`,
        :func:`per_token_causal_lm` (per-token next-token loss of a causal language model, probe
        ``(input_ids,)``), or
        ``fn(model, batch) -> Tensor`` of shape ``(samples,)`` or ``(samples, tokens)`` (reduction
        ``"none"``). For BIFs it should be the same loss as the posterior's, per sample.
    batch_size : int, optional
        Evaluate the probe set in chunks of this many samples (default: all at once).

    Attributes
    ----------
    num_samples : int
        Samples in the probe set.

    Raises
    ------
    ValueError
        For an empty probe set, tensors with different numbers of samples, an unknown loss name, a
        non-positive ``batch_size``, or (when called) a loss that does not return one value per sample.
    TypeError
        For a probe that is not a tuple or list of tensors.
    """

    def __init__(
        self,
        probe: Sequence[Tensor],
        loss_fn: str | PerSampleLossFn = "mse",
        *,
        batch_size: int | None = None,
    ):
        if isinstance(probe, Tensor) or not isinstance(probe, (tuple, list)) or not probe:
            raise TypeError(
                "probe must be a non-empty tuple of tensors with the samples along the first axis, such as "
                f"(x, y); got {type(probe).__name__}"
            )
        if not all(isinstance(t, Tensor) for t in probe):
            kinds = [type(t).__name__ for t in probe]
            raise TypeError(f"probe must hold tensors only, got {kinds}; convert with torch.as_tensor")
        sizes = {int(t.shape[0]) if t.ndim else -1 for t in probe}
        if len(sizes) != 1 or -1 in sizes:
            shapes = [tuple(t.shape) for t in probe]
            raise ValueError(
                f"every probe tensor needs the same number of samples (first axis), got {shapes}"
            )
        (self.num_samples,) = sizes
        if self.num_samples == 0:
            raise ValueError("the probe set is empty; pass at least one sample")
        if isinstance(loss_fn, str):
            if loss_fn not in _SHORTCUTS:
                raise ValueError(
                    f"unknown per-sample loss {loss_fn!r}; use 'mse', 'cross_entropy', 'causal_lm' or a "
                    "callable fn(model, batch) returning one loss per sample"
                )
            loss_fn = _SHORTCUTS[loss_fn]
        elif not callable(loss_fn):
            raise TypeError(f"loss_fn must be a string or a callable, got {type(loss_fn).__name__}")
        if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        self.loss_fn: PerSampleLossFn = loss_fn
        self.batch_size = batch_size
        self._probe = tuple(probe)
        self._on: dict[torch.device, tuple[Tensor, ...]] = {}

    def _probe_on(self, device: torch.device) -> tuple[Tensor, ...]:
        if device not in self._on:
            self._on[device] = tuple(t.to(device) for t in self._probe)
        return self._on[device]

    def __call__(self, model: nn.Module) -> Tensor:
        """Per-sample losses of ``model`` on the probe set, shape ``(samples,)`` or ``(samples, tokens)``."""
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        probe = self._probe_on(device)
        step = self.batch_size or self.num_samples
        parts = []
        with torch.no_grad():
            for start in range(0, self.num_samples, step):
                chunk = tuple(t[start : start + step] for t in probe)
                losses = self.loss_fn(model, chunk)
                expected = chunk[0].shape[0]
                if not isinstance(losses, Tensor) or losses.ndim == 0 or losses.shape[0] != expected:
                    got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
                    raise ValueError(
                        f"the per-sample loss returned {got} for {expected} probe samples; it must return "
                        "one loss per sample, shape (samples,) or (samples, tokens): use reduction='none'"
                    )
                parts.append(losses.detach())
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def __repr__(self) -> str:
        name = getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__)
        return f"PerSampleLoss(samples={self.num_samples}, loss_fn={name}, batch_size={self.batch_size})"
