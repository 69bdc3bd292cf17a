"""Running chains under ``torch.func.vmap`` without a flood of performance warnings.

Where an op has no batching rule, ``vmap`` runs it in a Python loop over the batch and warns ("There is
a performance drop because we have not yet implemented the batching rule for ..."), once per such op and
call: about 80 warnings for 20 draws of GPT-2. Such a model gains nothing from vectorized chains, so the
driver makes its first vectorized call through :func:`quiet_vmap_call`, and on ``chain_mode="auto"``
runs the chains one after another instead (silently; ``settings.chain_mode`` records it). Asked for
``"vectorized"`` explicitly, it warns once, naming the ops, and keeps going quietly.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "BATCHING_WARNING",
    "MissingBatchingRuleError",
    "quiet_vmap_call",
    "suppressed_batching_warnings",
    "warn_missing_batching_rules",
]

#: The start of torch's warning for an op that ``vmap`` runs without a batching rule.
BATCHING_WARNING = "There is a performance drop because we have not yet implemented the batching rule"
_OP = re.compile(r"batching rule for ([\w:]+(?:\.\w+)*)")


class MissingBatchingRuleError(RuntimeError):
    """Raised by the driver to leave vectorized chains when ops lack batching rules (``chain_mode="auto"``).

    Attributes
    ----------
    ops : list of str
        The ops ``vmap`` named.
    """

    def __init__(self, ops: list[str]):
        super().__init__(f"torch.func.vmap has no batching rule for {', '.join(ops)}")
        self.ops = ops


def quiet_vmap_call(fn: Callable[..., Any], *args: Any) -> tuple[Any, list[str]]:
    """Call ``fn(*args)`` with ``vmap``'s batching-rule warnings caught instead of shown.

    Other warnings pass through as usual.

    Returns
    -------
    result : Any
        What ``fn`` returned.
    ops : list of str
        The ops without a batching rule, each once, in the order met (empty when every op had one).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args)
    ops: list[str] = []
    for w in caught:
        text = str(w.message)
        if BATCHING_WARNING in text:
            match = _OP.search(text)
            op = match.group(1) if match else "an op"
            if op not in ops:
                ops.append(op)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, ops


@contextmanager
def suppressed_batching_warnings() -> Iterator[None]:
    """Inside the block, ``vmap``'s batching-rule warnings are ignored (others are not)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(BATCHING_WARNING))
        yield


def warn_missing_batching_rules(ops: list[str]) -> None:
    """One warning for every op without a batching rule, with the remedy."""
    warnings.warn(
        f"chain_mode='vectorized': torch.func.vmap has no batching rule for {', '.join(ops)} and runs "
        "them op by op, which is slower than chain_mode='sequential' (or 'auto', which picks it); further "
        "such warnings of this run are silenced",
        UserWarning,
        stacklevel=4,
    )
