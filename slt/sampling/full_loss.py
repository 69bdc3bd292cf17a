"""The exact full-data loss and its gradient at many flat positions at once.

Metropolis-adjusted chains (the density-of-states ladder, the exact targets of :mod:`slt.oracles`) need the
loss over *all* the data at every proposal; this evaluates it for a batch of chains in one go.
"""

from __future__ import annotations

import torch
from torch import Tensor

from slt.sampling.compiled import CompileFailed
from slt.sampling.data import TensorData, batch_length
from slt.sampling.driver import PosteriorSampler
from slt.sampling.vmap import quiet_vmap_call

__all__ = ["FullLoss", "full_loss_over_positions"]


class FullLoss:
    """Exact full-data mean loss (and gradient) at many flat positions at once.

    Uses ``torch.func.vmap`` over positions for in-memory data (``mode="vectorized"``; in eval mode
    only, see :class:`~slt.sampling.flat.FlatModel`), otherwise loads
    positions one by one into the working copy (``mode="sequential"``). Accumulates over the data in
    chunks, so memory stays bounded for large data sets. A sampler made with ``compile=True`` runs the
    vectorized pass compiled (see :mod:`slt.sampling.compiled`), eagerly where that fails.
    """

    def __init__(self, posterior: PosteriorSampler, mode: str):
        self.posterior = posterior
        self.mode = mode
        fm = posterior.flat_model
        if mode == "vectorized":
            loss_at = fm.functional_loss()
            self._eager = torch.func.vmap(torch.func.grad_and_value(loss_at), in_dims=(0, None))
            compiled = posterior.compiled.shared() if posterior.compiled is not None else None
            self._grad_and_value = compiled or self._eager

    def _gradient(self, positions: Tensor, batch) -> tuple[Tensor, Tensor]:
        try:
            return self._grad_and_value(positions, batch)
        except CompileFailed:  # the compiled pass failed or disagreed at its first call
            self._grad_and_value = self._eager
            return self._eager(positions, batch)

    def __call__(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Mean loss over the full data, shape ``(rows,)``, and its gradient, shape ``(rows, d)``."""
        if self.mode == "vectorized":
            total_loss = torch.zeros(positions.shape[0], dtype=positions.dtype, device=positions.device)
            total_grad = torch.zeros_like(positions)
            count = 0
            for batch in self.posterior.data.full_batches():
                size = batch_length(batch)
                grad, loss = self._gradient(positions, batch)
                total_loss += size * loss.detach()
                total_grad += size * grad.detach()
                count += size
            return total_loss / count, total_grad / count
        fm = self.posterior.flat_model
        losses = torch.empty(positions.shape[0], dtype=positions.dtype, device=positions.device)
        grads = torch.empty_like(positions)
        try:
            for row in range(positions.shape[0]):
                fm.load(positions[row])
                total, grad, count = 0.0, torch.zeros_like(fm.flat), 0
                for batch in self.posterior.data.full_batches():
                    size = batch_length(batch)
                    loss, g = fm.loss_and_grad(batch)
                    total += size * float(loss)
                    grad += size * g
                    count += size
                losses[row] = total / count
                grads[row] = grad / count
        finally:
            fm.load(fm.center)
        return losses, grads


def full_loss_over_positions(posterior: PosteriorSampler, chain_mode: str, rows: int) -> FullLoss:
    """A :class:`FullLoss` for ``rows`` positions at a time: vectorized where it can be.

    ``chain_mode="auto"`` vectorizes in-memory data unless a trial call on two positions fails (a model
    ``torch.func.vmap`` cannot handle), and falls back to ``"sequential"``.

    Raises
    ------
    ValueError
        For an unknown ``chain_mode``, or ``"vectorized"`` with data that is not in memory.
    """
    if chain_mode not in ("auto", "sequential", "vectorized"):
        raise ValueError(f"chain_mode must be 'auto', 'sequential' or 'vectorized', got {chain_mode!r}")
    in_memory = isinstance(posterior.data, TensorData)
    if chain_mode == "vectorized" and not in_memory:
        raise ValueError(
            "vectorized chains need in-memory data (a tuple of tensors or a TensorDataset); "
            "use chain_mode='sequential' with datasets and loaders"
        )
    if chain_mode == "sequential" or not in_memory or posterior.flat_model.model_mode == "train":
        return FullLoss(posterior, "sequential")
    full = FullLoss(posterior, "vectorized")
    if chain_mode == "vectorized":
        return full
    try:  # "auto": vectorize unless the model does something vmap cannot handle, or handles slowly
        _, missing = quiet_vmap_call(full, posterior.center.expand(min(rows, 2), -1).clone())
    except Exception:
        return FullLoss(posterior, "sequential")
    return FullLoss(posterior, "sequential") if missing else full
