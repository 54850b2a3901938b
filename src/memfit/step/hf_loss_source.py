"""Whether a Hugging Face model's forward takes its loss from ``self.loss_function`` alone.

A model class can carry ``loss_function`` (``ForCausalLMLoss``, chosen from its class name) and
still compute its loss another way. In transformers 5.25, 19 of the 200 causal-LM classes do
(BART, Marian, Pegasus, Whisper, XLNet, ...: ``CrossEntropyLoss()`` on unshifted labels, a mean
that ignores ``num_items_in_batch``), and Bamba adds a z-loss over every position to it. Memfit
may only treat a loss as ``ForCausalLMLoss`` (chunk it, split a batch by token counts) when the
forward's source shows exactly that: one ``loss = self.loss_function(..., **kwargs)``, the
``**kwargs`` passing ``num_items_in_batch`` on, and no other assignment to ``loss`` except under
a test of the router's logits (mixture-of-experts auxiliary losses, which ``hf_causal_lm_loss``
rules out by the config's ``output_router_logits``).

Known limitations:
    * Source-based: a forward whose source cannot be read (built at run time) does not qualify;
      neither does one that computes its loss in a helper method, even when that is the same.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator

__all__ = ["honours_num_items", "loss_is_loss_function"]


def loss_is_loss_function(cls: type) -> bool:
    """Whether ``cls.forward``'s loss is ``self.loss_function(..., **kwargs)`` and only that."""
    if cls not in _READ:  # a class's source is parsed once
        _READ[cls] = _reads_loss_function(_forward_source(cls))
    return _READ[cls]


def honours_num_items(cls: type) -> bool:
    """Whether ``cls.forward`` divides its loss by ``num_items_in_batch`` when given one: its
    loss is ``self.loss_function(..., **kwargs)`` alone, or its own source names the count (a
    user's model that takes it on purpose)."""
    return loss_is_loss_function(cls) or "num_items_in_batch" in (_forward_source(cls) or "")


_READ: dict[type, bool] = {}
_SOURCES: dict[type, str | None] = {}


def _forward_source(cls: type) -> str | None:
    """The source of ``cls.forward`` (read once per class), or None where it cannot be read."""
    if cls not in _SOURCES:
        try:
            _SOURCES[cls] = textwrap.dedent(inspect.getsource(cls.forward))  # type: ignore[attr-defined]
        except (AttributeError, OSError, TypeError):
            _SOURCES[cls] = None
    return _SOURCES[cls]


def _reads_loss_function(source: str | None) -> bool:
    try:
        tree = ast.parse(source) if source is not None else None
    except SyntaxError:
        tree = None
    if tree is None:
        return False
    calls = 0
    for node, router_guarded in _statements(tree.body, guarded=False):
        if not _assigns_loss(node):
            continue
        value = getattr(node, "value", None)
        if isinstance(node, ast.Assign) and isinstance(value, ast.Constant) and value.value is None:
            continue  # loss = None
        if isinstance(node, ast.Assign) and _is_loss_function_call(value):
            calls += 1
        elif not router_guarded:
            return False
    return calls == 1


def _statements(body: list[ast.stmt], guarded: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Every statement, nested ones included, and whether an ``if`` on router logits holds it."""
    for node in body:
        yield node, guarded
        if isinstance(node, ast.If):
            yield from _statements(node.body, guarded or _mentions_router(node.test))
            yield from _statements(node.orelse, guarded)
            continue
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                yield from _statements([child], guarded)
            elif isinstance(child, ast.ExceptHandler):
                yield from _statements(child.body, guarded)


def _assigns_loss(node: ast.stmt) -> bool:
    if isinstance(node, ast.Assign):
        targets = [n for t in node.targets for n in ast.walk(t)]
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    else:
        return False
    return any(isinstance(t, ast.Name) and t.id == "loss" for t in targets)


def _is_loss_function_call(value: ast.expr | None) -> bool:
    """``self.loss_function(...)`` with ``**kwargs`` among its arguments."""
    if not isinstance(value, ast.Call):
        return False
    function = value.func
    named = (
        isinstance(function, ast.Attribute)
        and function.attr == "loss_function"
        and isinstance(function.value, ast.Name)
        and function.value.id == "self"
    )
    return named and any(keyword.arg is None for keyword in value.keywords)


def _mentions_router(test: ast.expr) -> bool:
    names = [n.id for n in ast.walk(test) if isinstance(n, ast.Name)]
    names += [n.attr for n in ast.walk(test) if isinstance(n, ast.Attribute)]
    return any("router_logits" in name for name in names)
