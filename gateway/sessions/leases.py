"""Leases: which sessions this replica serves, as a lease object's verbs (after redis-py's
``Lock``: acquire/extend/release/owned). ``held`` is local (no I/O: the execute hot path);
``renew`` returns the keys lost instead of acting on them."""

from __future__ import annotations

import builtins
import contextlib
import math
import time
from collections.abc import Callable, Sequence

from gateway import errors
from gateway.registry import Registry, SessionKey


class Leases:
    def __init__(self, registry: Registry, holder: str, ttl_s: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._holder = holder
        self._ttl_s = ttl_s
        self._clock = clock
        self._until: dict[SessionKey, float] = {}
        self.shared = registry.shared  # with one process, every session is always ours

    async def claim(self, keys: Sequence[SessionKey]) -> builtins.list[bool]:
        """Take or extend each lease (free or ours already): one answer per key, one round
        trip. Raises RegistryUnavailable."""
        if not keys:
            return []
        asked_at = self._clock()
        granted = await self._registry.claim(list(keys), self._holder, self._ttl_s)
        for key, ok in zip(keys, granted, strict=True):
            if ok:
                self._until[key] = asked_at + self._ttl_s
        return granted

    def held(self, key: SessionKey) -> bool:
        """Whether this replica's lease of ``key`` is still good, as far as it knows."""
        return not self.shared or self._until.get(key, -math.inf) > self._clock()

    def assume(self, key: SessionKey) -> None:
        """Count ``key`` as held for a lease from now (its record names this replica)."""
        self._until[key] = self._clock() + self._ttl_s

    async def renew(self, keys: Sequence[SessionKey]) -> builtins.list[SessionKey]:
        """Extend the leases of ``keys``; returns those another replica holds now. Raises
        RegistryUnavailable."""
        granted = await self.claim(keys)
        return [key for key, ok in zip(keys, granted, strict=True) if not ok]

    async def release(self, key: SessionKey) -> None:
        """Give the lease up (best effort: an unreachable registry lets it expire)."""
        self._until.pop(key, None)
        with contextlib.suppress(errors.RegistryUnavailable):
            await self._registry.release(key[0], key[1], self._holder)
