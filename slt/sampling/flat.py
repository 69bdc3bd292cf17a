"""A private working copy of a model whose sampled parameters live in one flat vector.

Kernels operate on flat vectors; :class:`FlatModel` connects them to an arbitrary ``nn.Module``. It
deep-copies the model once (the caller's model is never written to), then re-points every sampled
parameter's ``.data`` and ``.grad`` at slices of two contiguous buffers. Loading a position is then a
single copy, and one ``backward()`` leaves the whole gradient in one flat tensor.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Union

import torch
from torch import Tensor, nn

from slt.sampling.losses import LossFn, check_scalar

__all__ = ["FlatModel", "Mask", "select_parameters", "MODEL_MODES"]

Mask = Union[Sequence[str], Mapping[str, Tensor], None]  # noqa: UP007 - a runtime alias


def select_parameters(
    named: Sequence[tuple[str, nn.Parameter]], mask: Mask
) -> tuple[list[str], dict[str, Tensor]]:
    """Decide which parameters are sampled.

    Parameters
    ----------
    named : sequence of (name, parameter)
        The model's trainable parameters.
    mask : sequence of str, mapping of str to bool Tensor, or None
        ``None`` samples every trainable parameter. A sequence of names samples the parameters with
        those names, or under those module prefixes (``"layers.0"`` selects ``layers.0.weight`` and
        ``layers.0.bias``). A mapping from names to boolean tensors of the parameter's shape samples
        only the ``True`` entries.

    Returns
    -------
    names : list of str
        Parameters that are sampled, in model order.
    elementwise : dict of str to Tensor
        Boolean masks for parameters that are only partly sampled.
    """
    available = [name for name, _ in named]
    if not available:
        raise ValueError(
            "the model has no trainable parameters (none with requires_grad=True); "
            "unfreeze the parameters whose learning coefficient you want"
        )
    if mask is None:
        return available, {}
    if isinstance(mask, Mapping):
        shapes = dict((name, p.shape) for name, p in named)
        elementwise: dict[str, Tensor] = {}
        for name, m in mask.items():
            if name not in shapes:
                raise ValueError(f"mask names unknown parameter {name!r}; parameters are {available}")
            m = torch.as_tensor(m).bool()
            if m.shape != shapes[name]:
                raise ValueError(
                    f"mask for {name!r} has shape {tuple(m.shape)}, parameter has {tuple(shapes[name])}"
                )
            if m.any():
                elementwise[name] = m
        names = [n for n in available if n in elementwise]
        if not names:
            raise ValueError("the mask selects no parameter entries; set some entries to True")
        return names, {n: m for n, m in elementwise.items() if not bool(m.all())}
    if isinstance(mask, str):
        mask = [mask]
    wanted = list(mask)
    if not wanted:
        raise ValueError("the mask is empty; name at least one parameter or module, or pass mask=None")
    chosen = set()
    for key in wanted:
        hits = [n for n in available if n == key or n.startswith(key + ".")]
        if not hits:
            raise ValueError(f"mask entry {key!r} matches no trainable parameter; parameters are {available}")
        chosen.update(hits)
    return [n for n in available if n in chosen], {}


#: The modes the working copy can sample in.
MODEL_MODES = ("eval", "train")
#: Parameter dtypes whose chains keep a float32 position.
LOW_PRECISION = (torch.bfloat16, torch.float16)


class FlatModel:
    """A deep copy of ``model`` whose sampled parameters are views into one flat buffer.

    Parameters
    ----------
    model : nn.Module
        The trained model; it is copied and never modified.
    loss_fn : callable
        ``loss_fn(model, batch) -> scalar``.
    mask : see :func:`select_parameters`
    device : torch.device, optional
        Where the copy lives; defaults to the model's device.
    model_mode : {"eval", "train"}
        The mode of the working copy. ``"eval"`` (the default) turns dropout off and freezes batch-norm
        statistics, so the loss at fixed weights is a deterministic function of the weights and the batch:
        the :math:`L_n(w)` the theory defines. ``"train"`` keeps dropout on (and batch statistics), as
        devinterp samples: the chains then sample the posterior of the dropout-averaged loss, and
        :math:`L_n(w^*)` and the control variate are measured in train mode too, so both sides of
        λ̂ see the same noise. The caller's model keeps its own modes either way.

    Raises
    ------
    TypeError
        When ``model`` is not an ``nn.Module``.
    ValueError
        For an unknown ``model_mode``, parameters of several dtypes, or a bad ``mask``.

    Attributes
    ----------
    module : nn.Module
        The working copy, in ``model_mode``.
    flat : Tensor
        The sampled coordinates, shape ``(d,)``; writing to it changes ``module``.
    grad : Tensor
        The gradient buffer filled by :meth:`loss_and_grad`.
    center : Tensor
        A copy of the initial (trained) weights :math:`w^*`, in :attr:`state_dtype`.
    state_dtype : torch.dtype
        The dtype chains hold their positions in: the model's, or float32 for a bfloat16 / float16
        model (whose forward and backward passes still run in its own dtype).
    coordinate_mask : Tensor or None
        0/1 vector over ``flat`` for partly-sampled parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        mask: Mask = None,
        device: torch.device | None = None,
        model_mode: str = "eval",
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if model_mode not in MODEL_MODES:
            raise ValueError(
                f"model_mode must be 'eval' (dropout off, batch-norm statistics frozen: a deterministic "
                f"loss) or 'train' (dropout on, as devinterp samples), got {model_mode!r}"
            )
        self.model_mode = model_mode
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names, elementwise = select_parameters(trainable, mask)
        if device is None:
            device = trainable[0][1].device
        self.device = torch.device(device)
        try:
            module = copy.deepcopy(model)
        except Exception as exc:  # pragma: no cover - depends on exotic user models
            raise ValueError(f"slt works on a copy of the model, and copying it failed: {exc!r}") from exc
        module.to(self.device)
        module.train(model_mode == "train")
        params = dict(module.named_parameters())
        chosen = set(self.names)
        for name, p in params.items():
            if name not in chosen:
                p.requires_grad_(False)
        selected = [params[n] for n in self.names]
        dtypes = {p.dtype for p in selected}
        if len(dtypes) != 1:
            raise ValueError(
                f"sampled parameters must share one dtype, found {sorted(map(str, dtypes))}; "
                "cast the model (model.float()) or restrict sampling with mask="
            )
        dtype = dtypes.pop()
        self.shapes = [p.shape for p in selected]
        self.numels = [p.numel() for p in selected]
        self.dim = sum(self.numels)
        self.flat = torch.empty(self.dim, dtype=dtype, device=self.device)
        self.grad = torch.zeros(self.dim, dtype=dtype, device=self.device)
        offset = 0
        for p, k in zip(selected, self.numels):
            self.flat[offset : offset + k].copy_(p.detach().reshape(-1))
            p.data = self.flat[offset : offset + k].view_as(p)
            p.grad = self.grad[offset : offset + k].view_as(p)
            offset += k
        # chains of a low-precision model keep their position and update in float32: a bfloat16 position
        # loses every step smaller than its resolution near 1 (measured: λ̂ +33% against float32)
        self.state_dtype = torch.float32 if dtype in LOW_PRECISION else dtype
        self.center = self.flat.to(self.state_dtype, copy=True)
        self.coordinate_mask: Tensor | None = None
        if elementwise:
            pieces = [
                elementwise[n].reshape(-1).to(self.device, self.state_dtype)
                if n in elementwise
                else torch.ones(k, dtype=self.state_dtype, device=self.device)
                for n, k in zip(self.names, self.numels)
            ]
            self.coordinate_mask = torch.cat(pieces)
        self.module = module
        self.loss_fn = loss_fn
        self.frozen = [p for n, p in params.items() if n not in chosen]

    @property
    def num_sampled(self) -> int:
        """Number of coordinates that move."""
        if self.coordinate_mask is None:
            return self.dim
        return int(self.coordinate_mask.sum().item())

    def load(self, position: Tensor) -> None:
        """Set the sampled weights of :attr:`module` to ``position``."""
        self.flat.copy_(position)

    @contextmanager
    def at(self, position: Tensor) -> Iterator[FlatModel]:
        """Hold the weights at ``position`` inside the block and put them back at :attr:`center` after."""
        self.load(position)
        try:
            yield self
        finally:
            self.load(self.center)

    def loss(self, batch: Any) -> Tensor:
        """Mean loss of the current weights on ``batch`` (no gradient), in :attr:`state_dtype`."""
        with torch.no_grad():
            return check_scalar(self.loss_fn(self.module, batch)).to(self.state_dtype)

    def loss_and_grad(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Mean loss on ``batch`` and its gradient with respect to :attr:`flat`.

        The returned gradient is the internal buffer :attr:`grad`, overwritten by the next call.
        """
        self.grad.zero_()
        loss = self.loss_fn(self.module, batch)
        loss.backward()
        if self.state_dtype != self.grad.dtype:
            return loss.detach().to(self.state_dtype), self.grad.to(self.state_dtype)
        return loss.detach(), self.grad

    def functional_loss(self, module: nn.Module | None = None, dtype: torch.dtype | None = None) -> Any:
        """A function ``f(position, batch, others=None) -> loss`` of a flat position, for ``torch.func``.

        It runs ``module`` (default :attr:`module`) with the sampled weights taken from ``position``;
        ``others`` (names prefixed ``"model."``) replaces its other parameters and buffers, so that one
        template model can stand for any model of its architecture (see :mod:`slt.sampling.compiled`).
        ``dtype`` (default the model's) is the dtype the sampled weights are cast to, for a ``module``
        converted to another precision.
        """
        names, shapes, numels = list(self.names), list(self.shapes), list(self.numels)
        wrapper = _LossModule(self.module if module is None else module, self.loss_fn)

        dtype = self.flat.dtype if dtype is None else dtype

        def loss_at(position: Tensor, batch: Any, others: dict[str, Tensor] | None = None) -> Tensor:
            pieces = torch.split(position.to(dtype), numels)
            params = {"model." + n: v.view(s) for n, v, s in zip(names, pieces, shapes)}
            if others:
                params.update(others)
            return torch.func.functional_call(wrapper, params, (batch,)).reshape(()).to(position.dtype)

        return loss_at


class _LossModule(nn.Module):
    """Wraps ``loss_fn(model, batch)`` as a module so ``functional_call`` can swap the weights."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)
