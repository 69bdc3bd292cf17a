"""Compiled gradients: the minibatch loss and its gradient as one ``torch.compile``-d function of the weights.

A chain step spends most of its time in the forward and backward pass. Eagerly, each runs op by op
through the autograd engine; compiled (TorchInductor), the pass is fused into generated code. Measured on
one CPU core in two runs (``benchmarks/bench_compile.py``): 0.6-0.93x the eager time per chain-step one
chain after another, 0.24-0.48x with the chains stacked on small models, and a warm-up of seconds per
architecture (tens of seconds for the first compilation of a process). So compilation is opt-in
(``compile=True``), and pays on long runs and on sweeps, which reuse one compiled function across
checkpoints.

Reuse. The compiled function takes the sampled weights, every other parameter and buffer, and the batch
as inputs, and runs a *template* copy of the model through :func:`torch.func.functional_call`. Every
model of the same architecture (the same module tree, parameter and buffer names, shapes and dtypes, and
plain attributes), loss function, device and sampled coordinates therefore shares one compiled graph: all
chains, step sizes and temperatures of one sampler, and every checkpoint of a sweep. What is not a
parameter or a buffer comes from the template, so the plain attributes of every submodule (a normal
crossing's ``powers``: numbers and strings by value, tensors by content, other objects by ``repr`` or
identity) are part of the signature: two normal crossings that differ only there once shared a function,
and the second ran the first's model.

Safety. The first call of each compiled function on each model is checked against that model's eager loss
and gradient at the same point, also where the function was checked for another model already (a
difference the signature cannot see still shows there): relative error at most 1e-3, or, where the
gradient is itself of the order of float32 rounding, as at a memorized minimum, at most ten times further
from a float64 pass than the eager pass is. Any failure to compile, or a disagreement beyond
floating-point rounding, falls back to eager with the reason recorded (:attr:`CompiledGradient.reason`,
the result's ``settings.compile``). A call that dynamo ran untraced (past its recompile limit) gives eager
numbers and is labelled so too. Models in ``model_mode="train"`` are not compiled: dropout inside a
compiled graph draws its own random numbers.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slt.sampling.flat import FlatModel

__all__ = ["CompiledGradient", "CompileFailed", "clear_compiled_cache", "COMPILE_TOLERANCE"]

#: Largest relative disagreement between compiled and eager gradients accepted at the first call
#: (fused kernels reorder floating-point sums: measured 1e-8 to 3e-8 absolute in float32).
COMPILE_TOLERANCE = 1e-3
#: Where the relative check fails, a compiled pass still passes when it is within this many times the
#: eager pass's distance from a float64 pass: near a trained minimum the gradient is of the order of float32
#: rounding (the grokking example's last checkpoint: largest coordinate 2.5e-6, the eager float32 pass
#: 1.1e-8 from float64, and the compiled one the same; relative error between them 1.2e-3).
ROUNDING_FACTOR = 10.0
#: Compiled functions kept (one per architecture, loss, device and mask); the oldest is dropped first.
CACHE_SIZE = 4

GradientFn = Callable[[Tensor, Any], tuple[Tensor, Tensor]]
#: The compiled functions of an architecture: one chain; stacked chains, each on its own batch; many
#: positions on one batch.
KINDS = ("sequential", "vectorized", "shared")


class CompiledGradient:
    """The loss and its gradient at a flat position, through one compiled function shared by equal models.

    Call :meth:`sequential`, :meth:`vectorized` or :meth:`shared` to get ``f(position, batch) -> (grad,
    loss)`` (one chain: position ``(d,)``; stacked chains: ``(chains, d)`` and a batch stacked per chain;
    many positions on one batch), or ``None`` when compilation failed; :attr:`reason` then says why.

    Attributes
    ----------
    reason : str or None
        Why the compiled path is not used (``None`` while it is, or has not been tried).
    used : bool
        Whether a compiled function ran on this sampler.
    """

    def __init__(self, flat_model: FlatModel):
        self.fm = flat_model
        self.reason: str | None = None
        self.used = False
        self._checked = dict.fromkeys(KINDS, False)  # this model's first call of each kind agreed
        if flat_model.model_mode == "train":
            self.reason = (
                "model_mode='train': dropout inside a compiled graph would draw its own random numbers"
            )
            return
        self._entry = _cache_entry(flat_model)
        params = dict(flat_model.module.named_parameters())
        sampled = set(flat_model.names)
        self._others = {"model." + n: p.detach() for n, p in params.items() if n not in sampled}
        self._others.update({"model." + n: b for n, b in flat_model.module.named_buffers()})

    @property
    def status(self) -> str:
        """``"compiled"``, ``"eager: <reason>"``, or ``"not yet run"``."""
        if self.reason is not None:
            return f"eager: {self.reason}"
        return "compiled" if self.used else "not yet run"

    def sequential(self) -> GradientFn | None:
        """``f(position (d,), batch) -> (grad (d,), loss ())``, compiled, or ``None``."""
        return self._function("sequential")

    def vectorized(self) -> GradientFn | None:
        """``f(positions (chains, d), stacked batch) -> (grads, losses (chains,))``, or ``None``."""
        return self._function("vectorized")

    def shared(self) -> GradientFn | None:
        """``f(positions (rows, d), one batch) -> (grads, losses (rows,))``, or ``None``.

        Every position on the same batch: the full-data loss of Metropolis-adjusted chains
        (:class:`slt.sampling.full_loss.FullLoss`).
        """
        return self._function("shared")

    def _function(self, kind: str) -> GradientFn | None:
        entry = self._entry if self.reason is None else None
        if entry is not None and entry.failure[kind] is not None:
            self.reason = entry.failure[kind]
        if self.reason is not None or entry is None:
            return None
        compiled = entry.function(kind)
        others = self._others
        checked = self._checked[kind]

        def gradient(position: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
            nonlocal checked
            untraced = entry.untraced
            if checked:  # TorchInductor is imported by now: a recompilation (a new batch shape) is quiet
                grad, loss = compiled(position, batch, others)
                if entry.untraced != untraced:  # correct numbers, computed eagerly: label them so
                    self.reason = entry.failure[kind] = _untraced_reason()
                return grad, loss
            # the first call on this model is checked against its own eager pass, also where the function
            # was checked for another model of this signature (a difference the signature cannot see, in
            # an attribute it does not read, would otherwise give another model's numbers silently); only a
            # failure of the function itself is kept for the architecture
            shared = entry.checked[kind]

            def fail(reason: str) -> CompileFailed:
                self.reason = reason
                if not shared:
                    entry.failure[kind] = reason
                return CompileFailed(reason)

            try:
                with _torch_internal_warnings_quiet():
                    grad, loss = compiled(position, batch, others)
            except Exception as error:  # any failure of dynamo or inductor: run eagerly instead
                raise fail(f"torch.compile failed ({type(error).__name__}: {_first_line(error)})") from error
            if entry.untraced != untraced:
                raise fail(_untraced_reason())
            mismatch = self._compare(position, batch, grad, loss, kind)
            if mismatch is not None:
                if shared:
                    mismatch = (
                        "the compiled function kept for a model of this architecture disagrees with this "
                        f"model ({mismatch[len('the compiled gradient ') :]}): it differs from that model in "
                        "something that is neither a parameter nor a buffer"
                    )
                raise fail(mismatch)
            checked = self._checked[kind] = entry.checked[kind] = True
            self.used = True
            return grad, loss

        return gradient

    def _compare(self, position: Tensor, batch: Any, grad: Tensor, loss: Tensor, kind: str) -> str | None:
        """The disagreement of a compiled first call with the eager pass, or ``None`` if they agree."""
        eager = torch.func.grad_and_value(self.fm.functional_loss())
        if kind != "sequential":
            eager = torch.func.vmap(eager, in_dims=(0, 0 if kind == "vectorized" else None))
        with torch.no_grad():
            expected_grad, expected_loss = eager(position, batch)
        if kind != "sequential":  # stacked positions: compare the chains whose eager pass is finite
            finite = torch.isfinite(expected_loss) & torch.isfinite(expected_grad).all(dim=-1)
            if not bool(finite.all()):
                kept = (t[finite] for t in (grad, loss, expected_grad, expected_loss))
                grad, loss, expected_grad, expected_loss = kept
                position = position[finite]
                batch = torch.utils._pytree.tree_map(
                    lambda t: t[finite] if isinstance(t, Tensor) and kind == "vectorized" else t, batch
                )
                if not bool(finite.any()):
                    return None  # nothing finite to compare: the next model's first call checks again
        grad_error = _relative(grad, expected_grad)
        loss_error = _relative(loss, expected_loss)
        if grad_error <= COMPILE_TOLERANCE and loss_error <= COMPILE_TOLERANCE:
            return None
        # near a minimum the gradient is of the order of float32 rounding, and a relative error means
        # nothing there: then the compiled pass passes if it is about as close to a float64 pass as the
        # eager one is
        exact = self._float64(position, batch, kind)
        if exact is not None:
            exact_grad, exact_loss = exact
            compiled_off = [_largest(grad, exact_grad), _largest(loss, exact_loss)]
            eager_off = [_largest(expected_grad, exact_grad), _largest(expected_loss, exact_loss)]
            scales = [_largest(exact_grad), _largest(exact_loss)]
            if all(
                c <= max(ROUNDING_FACTOR * e, COMPILE_TOLERANCE * s)
                for c, e, s in zip(compiled_off, eager_off, scales)
            ):
                return None
        return (
            f"the compiled gradient disagrees with the eager one (relative error {grad_error:.2g} in the "
            f"gradient, {loss_error:.2g} in the loss, above {COMPILE_TOLERANCE:g}"
            + (
                ""
                if exact is None
                else f", and {ROUNDING_FACTOR:g}x further than the eager pass from a float64 pass"
            )
            + ")"
        )

    def _float64(self, position: Tensor, batch: Any, kind: str) -> tuple[Tensor, Tensor] | None:
        """The eager gradient and loss in float64, or ``None`` where that cannot be computed."""
        if self.fm.flat.dtype == torch.float64:
            return None
        try:
            module = copy.deepcopy(self.fm.module).double()
            exact = torch.func.grad_and_value(self.fm.functional_loss(module, dtype=torch.float64))
            if kind != "sequential":
                exact = torch.func.vmap(exact, in_dims=(0, 0 if kind == "vectorized" else None))
            batch64 = torch.utils._pytree.tree_map(
                lambda t: t.double() if isinstance(t, Tensor) and t.is_floating_point() else t, batch
            )
            with torch.no_grad():
                return exact(position.double(), batch64)
        except Exception:  # a loss that builds float32 tensors of its own, or no memory for the copy
            return None


def _largest(a: Tensor, b: Tensor | None = None) -> float:
    """The largest absolute coordinate of ``a`` (or of ``a - b``), in float64."""
    diff = a.double() if b is None else a.double() - b.double()
    return float(diff.abs().max())


def _relative(value: Tensor, expected: Tensor) -> float:
    """The largest coordinate of ``value - expected`` relative to the largest of ``expected``."""
    return _largest(value, expected) / (_largest(expected) + 1e-30)


class CompileFailed(Exception):
    """Raised by the first call of a compiled function that failed or disagreed; the caller runs eagerly."""


class _Entry:
    """A template model and its compiled functions (one per kind of :data:`KINDS`), shared by equal models."""

    def __init__(self, flat_model: FlatModel):
        template = copy.deepcopy(flat_model.module)
        for p in template.parameters():
            p.requires_grad_(False)
        loss_at = flat_model.functional_loss(template)  # f(position, batch, others)
        #: How often the loss ran as Python outside dynamo's tracing: a compiled function that runs it
        #: so has been run untraced (eagerly), which dynamo does silently past its recompile limit.
        self.untraced = 0

        def counted_loss_at(position: Tensor, batch: Any, others: dict[str, Tensor]) -> Tensor:
            if not torch.compiler.is_compiling():
                self.untraced += 1
            return loss_at(position, batch, others)

        self.loss_at = counted_loss_at
        self._functions: dict[str, Any] = {}
        self.checked = dict.fromkeys(KINDS, False)
        self.failure: dict[str, str | None] = dict.fromkeys(KINDS)

    def function(self, kind: str) -> Any:
        if kind not in self._functions:
            gradient = torch.func.grad_and_value(self.loss_at)
            if kind != "sequential":
                gradient = torch.func.vmap(gradient, in_dims=(0, 0 if kind == "vectorized" else None, None))
            # dynamic=False: each batch shape gets code of its own. A shape-generic graph, which torch
            # makes after a second shape, measured as slow as eager (a full-data pass of 96 positions of
            # a 241-parameter MLP: 37.7 ms, eager 39.0, specialized 26.6).
            with _torch_internal_warnings_quiet():  # the first compilation imports TorchInductor
                self._functions[kind] = torch.compile(_own_code(gradient), dynamic=False)
        return self._functions[kind]


def _own_code(function: Callable) -> Callable:
    """A copy of ``function`` with a code object of its own.

    Dynamo keeps compiled code, and counts recompilations against ``torch._dynamo.config.recompile_limit``
    (8), per *code object*. Every ``torch.func.grad_and_value`` result shares one code object (functorch's
    ``wrapper``), so without a copy the ninth architecture or batch shape of a process would run untraced,
    eagerly and silently (measured: 14 MLP widths in one process, from the ninth on). With its own code
    object each compiled function has the limit to itself.
    """
    code = function.__code__
    copied = types.FunctionType(
        code.replace(co_name=code.co_name),  # replace() builds a new code object, equal but not identical
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    copied.__kwdefaults__ = function.__kwdefaults__
    return functools.update_wrapper(copied, function)


def _untraced_reason() -> str:
    limit = getattr(torch._dynamo.config, "recompile_limit", None)
    return (
        "torch.compile ran the function untraced, so eagerly (dynamo stops compiling a function after "
        f"torch._dynamo.config.recompile_limit = {limit} versions, one per batch shape and chain count, "
        "and skips frames it cannot trace; TORCH_LOGS=recompiles,graph_breaks says which)"
    )


_CACHE: OrderedDict[tuple, _Entry] = OrderedDict()


def _plain_attributes(module: nn.Module) -> tuple:
    """Every submodule's attributes that are neither parameters, buffers nor submodules, as comparable values.

    The compiled function runs a template copy of the first model, so whatever else ``forward`` may read
    must be equal for models to share it: numbers, strings and their containers by value (a normal
    crossing's ``powers``), tensors by shape, dtype and content, anything else by its ``repr`` where that
    shows content and by identity where it shows only an address (or where the value cannot be read
    otherwise: a ``repr`` that raises, a sparse tensor, containers nested deeper than four levels); numpy
    arrays by content, modules kept outside the module tree by their state and attributes. Attributes
    named with an underscore count too; only those ``nn.Module`` sets itself are left out. Identity holds
    the object (its address cannot be reused while the cache keeps the key), so it never makes two
    different models share; the first-call check of each model backs up the rest.
    """

    def value(v: Any, depth: int = 0) -> Any:
        if v is None or isinstance(v, (bool, int, float, complex, str, bytes, torch.dtype, torch.device)):
            return v
        try:
            if depth < 4 and isinstance(v, (tuple, list)):
                return (type(v).__name__, tuple(value(item, depth + 1) for item in v))
            if depth < 4 and isinstance(v, dict):
                return ("dict", tuple((repr(k), value(item, depth + 1)) for k, item in v.items()))
            if isinstance(v, Tensor):
                data = v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                return ("tensor", tuple(v.shape), str(v.dtype), hashlib.sha1(data).hexdigest())
            if isinstance(v, np.ndarray):
                return ("array", v.shape, str(v.dtype), hashlib.sha1(np.ascontiguousarray(v)).hexdigest())
            if depth < 4 and isinstance(v, nn.Module):  # a module outside the tree (in a plain list)
                state = tuple((k, value(t, depth + 1)) for k, t in v.state_dict().items())
                return ("module", repr(v), state, _plain_attributes(v))
            if depth < 4:
                text = repr(v)
                if " at 0x" not in text:
                    return (type(v).__qualname__, text)
        except Exception:  # an unreadable value: compare by identity
            pass
        return (type(v).__qualname__, _Same(v))

    return tuple(
        (name, tuple((k, value(v)) for k, v in sorted(vars(m).items()) if k not in _MODULE_OWN))
        for name, m in module.named_modules()
    )


#: The attributes ``nn.Module`` sets on every module (parameters, buffers, submodules, hooks, mode).
_MODULE_OWN = frozenset(vars(nn.Module()))


class _Same:
    """Equal only to a wrapper of the same object, which it keeps alive.

    So its address is never reused by another object while a cache key holds it.
    """

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _signature(fm: FlatModel) -> tuple:
    """What two models must share to share a compiled function."""
    module = fm.module
    loss = getattr(fm.loss_fn, "fn", fm.loss_fn)
    mask = None if fm.coordinate_mask is None else tuple(fm.coordinate_mask.tolist())
    return (
        repr(module),
        tuple(type(m).__qualname__ for m in module.modules()),
        tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in module.named_parameters()),
        tuple((n, tuple(b.shape), b.dtype) for n, b in module.named_buffers()),
        tuple(fm.names),
        mask,
        id(loss),
        str(fm.device),
        fm.model_mode,
        _plain_attributes(module),
    )


def _cache_entry(fm: FlatModel) -> _Entry:
    key = _signature(fm)
    entry = _CACHE.get(key)
    if entry is None:
        entry = _CACHE[key] = _Entry(fm)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return entry


def clear_compiled_cache() -> None:
    """Forget every compiled function kept for reuse (the next compiled run compiles afresh)."""
    _CACHE.clear()


@contextmanager
def _torch_internal_warnings_quiet() -> Iterator[None]:
    """Silence the deprecation notices torch's compiler stack raises about its own internals.

    Compiling imports parts of torch that warn of their own deprecation (``torch.jit.script_method``);
    they say nothing about the user's code and would fail runs that turn warnings into errors.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        yield


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""
