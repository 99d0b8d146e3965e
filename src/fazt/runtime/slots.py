"""The slot semaphore: at most `max_concurrent_js` handlers run at once, shared fairly.

A request that finds no free slot is refused at once instead of queueing:
on a small machine a queue of JavaScript only turns overload into a frozen
CPU and timeouts for everyone, while a quick 429 lets the client back off.
The size changes at run time (recalibration). Growing frees slots at once;
shrinking never stops a running handler, it only refuses new ones until
enough have finished.

Fair shares. Without them two slow requests to one site took both slots of a
2-CPU server and every other site's back end answered 429. A site may hold at
most its share of the slots:

    share = max(1, size // min(backends, others + 2))

where `others` is the number of other sites holding a slot right now and
`backends` the number of sites that have a back end at all. The `+ 2` leaves
room for one more site beside those running: with three slots, two sites that
flood slow handlers hold one each and a third site's request still runs. A
server with one back end gives it every slot (there is nobody to share with);
with two, each may take half. The total never passes `size`, and a site's
running handlers are never stopped when its share shrinks: it only gets 429
until it is back under it.
"""

import threading


class Slots:
    """A resizable, non-blocking counting semaphore with fair shares per site."""

    def __init__(self, size: int, backends: int = 1):
        self._lock = threading.Lock()
        self._size = max(0, int(size))
        self._backends = max(1, int(backends))
        self._held: dict[str, int] = {}  # site -> slots it holds now
        self._in_use = 0
        self._rejected = 0
        self._unfair = 0  # refusals because the site held its share while slots were free

    def share(self, site: str) -> int:
        """How many slots `site` may hold at once right now."""
        with self._lock:
            return self._share(site)

    def _share(self, site: str) -> int:
        others = len(self._held) - (1 if site in self._held else 0)
        return max(1, self._size // min(self._backends, others + 2))

    def try_acquire(self, site: str = "") -> bool:
        """Take a slot for `site` if one is free and the site is under its share;
        never waits. A refusal is counted."""
        with self._lock:
            held = self._held.get(site, 0)
            if self._in_use < self._size and held < self._share(site):
                self._in_use += 1
                self._held[site] = held + 1
                return True
            self._rejected += 1
            if self._in_use < self._size:
                self._unfair += 1
            return False

    def release(self, site: str = "") -> None:
        """Give back a slot taken by try_acquire for the same site."""
        with self._lock:
            held = self._held.get(site, 0)
            if held <= 0:
                raise RuntimeError("Slots.release() without a matching try_acquire()")
            self._in_use -= 1
            if held == 1:
                del self._held[site]
            else:
                self._held[site] = held - 1

    def why_refused(self, site: str) -> str:
        """The sentence for a refusal of `site` (racy by nature: for the message only)."""
        with self._lock:
            share = self._share(site)
            if self._in_use < self._size and self._held.get(site, 0) >= share:
                runs = f"{share} JavaScript request{'s' if share > 1 else ''}"
                return (f"This site already runs {runs} at once, its share of the slots "
                        "while other sites run theirs; try again in a second.")
        return "Every JavaScript slot is busy; try again in a second."

    def resize(self, size: int) -> None:
        """New capacity; running holders keep their slots."""
        with self._lock:
            self._size = max(0, int(size))

    def set_backends(self, count: int) -> None:
        """How many sites have a back end (told by the instance at boot and on deploys)."""
        with self._lock:
            self._backends = max(1, int(count))

    def stats(self) -> dict:
        with self._lock:
            return {"slots": self._size, "in_use": self._in_use, "rejected": self._rejected,
                    "rejected_over_share": self._unfair, "sites_running": len(self._held),
                    "backends": self._backends}
