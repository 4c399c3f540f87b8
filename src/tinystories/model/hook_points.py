"""Hook points: named places in a model's forward pass for hooks to read or replace, as in
TransformerLens's hook_points.py.

Every activation worth looking at passes through a `HookPoint`, an identity module named by
its place (``blocks.0.attn.hook_pattern``, ``blocks.1.mlp.hook_post``). A forward hook
registered on one reads the activation, or returns a replacement that the rest of the forward
pass then uses: recording, patching and the forward pass are one code path
(`tinystories.interpret.hooks` builds on this). With no hook registered they cost a function
call. `HookedModule` is what a model with hook points gets: them by name (`hook_points`), hooks
that act on one thread's forward passes only (`hooked`), and whether any listen (`listened`).
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

__all__ = ["HookPoint", "HookedModule"]

# Held while a hook is added or removed with its count, and while `HookPoint.active` compares
# them: otherwise another thread could see one without the other, and take a hook meant for every
# thread for one of `hooked`'s (skipping it), or one of those for one meant for every thread.
_HOOKING = threading.Lock()


class HookPoint(nn.Module):
    """The identity, at a named place in the forward pass, for hooks to read or replace.

    Hooks added with `HookedModule.hooked` act only on the forward passes of the thread that added
    them (`scoped` counts them per thread): a server runs one model for many clients, and
    one client's recording or steering must neither see nor change another's.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scoped: Counter[int] = Counter()  # thread id -> hooks `HookedModule.hooked` added for that thread

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """Whether a hook listens here on this thread (the attention pattern is only computed then)."""
        with _HOOKING:  # hooks and their count change together (`HookedModule.hooked`)
            hooks = len(self._forward_hooks) + len(self._forward_pre_hooks)
            if not hooks:
                return False
            return hooks > self.scoped.total() or self.scoped[threading.get_ident()] > 0


class HookedModule(nn.Module):
    """A module with `HookPoint`s among its submodules (`tinystories.model.gpt.GPT`)."""

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point by name, in forward order (``hook_embed``, ``blocks.0.hook_resid_pre``, ...)."""
        return dict(self._points())

    def _points(self) -> list[tuple[str, HookPoint]]:
        found = self.__dict__.get("_hook_point_list")  # the modules never change after __init__
        if found is None:
            found = [(name, m) for name, m in self.named_modules() if isinstance(m, HookPoint)]
            self.__dict__["_hook_point_list"] = found
        return found

    @contextlib.contextmanager
    def hooked(self, hooks: Mapping[str, Callable[[torch.Tensor], torch.Tensor | None]]) -> Iterator[None]:
        """Within the block, `hooks[name](activation)` runs at hook point `name` in every forward
        pass this thread makes; a returned tensor replaces the activation (None keeps it).

        Only this thread's passes: a server's engine thread runs the same model at the same time
        for other clients, and must be neither recorded nor changed.
        """
        points = self.hook_points()
        unknown = sorted(set(hooks) - set(points))
        if unknown:
            raise KeyError(f"no hook point named {unknown}; e.g. {list(points)[:4]}")
        me = threading.get_ident()

        def wrap(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[..., torch.Tensor | None]:
            return lambda _module, _inputs, out: fn(out) if threading.get_ident() == me else None

        handles = []
        try:
            with _HOOKING:
                for name, fn in hooks.items():
                    handles.append(points[name].register_forward_hook(wrap(fn)))
                    points[name].scoped[me] += 1
            yield
        finally:
            with _HOOKING:
                for name, h in zip(hooks, handles):
                    h.remove()
                    points[name].scoped[me] -= 1
                    if not points[name].scoped[me]:
                        del points[name].scoped[me]

    def listened(self) -> bool:
        """Whether any hook acts on this thread's forward passes (then only `forward` computes them):
        one `hooked` added on this thread, or one registered on any module directly (for every thread)."""
        for m in self.modules():
            if isinstance(m, HookPoint):
                if m.active:
                    return True
            elif m._forward_hooks or m._forward_pre_hooks:
                return True
        return False
