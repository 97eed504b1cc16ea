"""Registries of policy losses and advantage estimators: the names a config can use.

A registry maps a name to a pure function and records which keyword arguments the function
takes. The trainer owns one namespace of hyper-parameters (traced numbers such as ``eps_low``,
``gamma``, ``kl_coef`` and static options such as ``std_scaling``) and calls a registered
function with exactly the keywords it declares (:meth:`Registry.call`), so a new loss needs no
edit anywhere else: write it, decorate it, name it in the config::

    from r1jax.algos import PolicyLossOutput, register_policy_loss

    @register_policy_loss("my_loss")
    def my_loss(logp, old_logp, advantages, mask, *, eps_low, log_ratio_clamp):
        ...
        return PolicyLossOutput(...)

A module that registers things is listed in the config key ``run.imports`` (a module name or a
``.py`` file), which is imported before the config is validated, and ``algo.policy_loss: my_loss``
selects it. The config's allowed values are read from these registries.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator, Mapping

__all__ = ["Registry", "RegistryEntry"]


class RegistryEntry:
    """One registered function, its keyword-only parameters and free-form metadata."""

    def __init__(self, name: str, fn: Callable, meta: Mapping[str, Any]):
        self.name = name
        self.fn = fn
        self.meta = dict(meta)
        params = inspect.signature(fn).parameters.values()
        self.keywords = tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
        self.required = tuple(p.name for p in params
                              if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty)


class Registry(Mapping[str, Callable]):
    """A name → function mapping that functions join with a decorator.

    ``registry[name]`` is the function (a KeyError lists the known names); ``registry.entry(name)``
    gives its keywords and metadata. Iteration order is registration order.

    Args:
      kind: what is registered, for messages ("policy loss").
      meta_defaults: the metadata keys an entry may set, with their defaults.
    """

    def __init__(self, kind: str, meta_defaults: Mapping[str, Any] | None = None):
        self.kind = kind
        self._meta_defaults = dict(meta_defaults or {})
        self._entries: dict[str, RegistryEntry] = {}

    def register(self, name: str, fn: Callable | None = None, *, overwrite: bool = False, **meta: Any):
        """Registers ``fn`` under ``name``; without ``fn``, returns a decorator.

        Args:
          name: the config name.
          fn: the function.
          overwrite: replace an existing entry (otherwise a duplicate name is a ValueError).
          **meta: metadata (only the keys of ``meta_defaults``).

        Returns:
          ``fn`` unchanged (or the decorator).
        """
        if fn is None:
            return lambda f: self.register(name, f, overwrite=overwrite, **meta)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind}: a name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise TypeError(f"{self.kind} {name!r}: {fn!r} is not callable")
        unknown = set(meta) - set(self._meta_defaults)
        if unknown:
            raise TypeError(f"{self.kind} {name!r}: unknown metadata {sorted(unknown)}; "
                            f"allowed: {sorted(self._meta_defaults)}")
        if name in self._entries and not overwrite and self._entries[name].fn is not fn:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass overwrite=True to replace it)")
        self._entries[name] = RegistryEntry(name, fn, {**self._meta_defaults, **meta})
        return fn

    def entry(self, name: str) -> RegistryEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self._entries)}") from None

    def __getitem__(self, name: str) -> Callable:
        return self.entry(name).fn

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """The registered names (the allowed values of the config key that selects one)."""
        return tuple(self._entries)

    def check_keywords(self, name: str, available: Mapping[str, Any] | frozenset | set) -> None:
        """Raises TypeError when ``name`` needs a keyword the caller cannot provide."""
        missing = [k for k in self.entry(name).required if k not in available]
        if missing:
            raise TypeError(f"{self.kind} {name!r} takes keyword(s) {missing} that the trainer does not provide; "
                            f"available: {', '.join(sorted(available))}")

    def call(self, name: str, *args: Any, hparams: Mapping[str, Any]) -> Any:
        """``registry[name](*args, **{k: hparams[k] for k in its keywords})``."""
        entry = self.entry(name)
        self.check_keywords(name, hparams)
        return entry.fn(*args, **{k: hparams[k] for k in entry.keywords if k in hparams})
