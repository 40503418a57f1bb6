"""Channel index spaces: the algebra behind pruning groups.

Every dimension of every tensor seen while tracing is labelled with a *factor list*: a tuple of space
ids whose sizes multiply to the dimension's size (row-major). Spaces that must share one index (a
conv's output channels and the next BatchNorm's channels, two operands of a residual add, ...) are
merged with union-find. A space can be *decomposed*: into a product of smaller spaces (a reshape that
splits channels into heads × head_dim, a grouped conv's groups × channels-per-group) or into a sum of
segments (concatenation, channel slicing). The undecomposed roots are the units a pruning mask acts on.

A space is *blocked* with a human-readable reason when removing some of its indices would change the
model's function (it is normalized over, contracted between activations, reaches the model output, ...).
Blocking a space blocks everything it was decomposed into.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

Label = tuple[int, ...]
"""A factor list: the spaces of one tensor dimension, outermost first."""


@dataclass(frozen=True)
class Site:
    """Why and where a space was decomposed."""

    cause: str  # "reshape", "groups", "concat", "slice", "unify"
    module: str = ""

    def __str__(self) -> str:
        return f"{self.cause} in {self.module or '<model>'}"


@dataclass
class Decomposition:
    kind: str  # "product" (row-major factors) or "sum" (concatenated segments)
    children: list[int]
    site: Site


@dataclass
class _Root:
    size: int
    members: list[int]
    reasons: list[str] = field(default_factory=list)
    decomposition: Decomposition | None = None


class SpaceTable:
    """Union-find over channel spaces with product/sum decompositions and blocking reasons."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._origin: list[int | None] = []  # the space this one was decomposed from
        self._roots: dict[int, _Root] = {}

    # ---------------------------------------------------------------- basics
    def new(self, size: int, reason: str | None = None) -> int:
        sid = len(self._parent)
        self._parent.append(sid)
        self._origin.append(None)
        self._roots[sid] = _Root(size=size, members=[sid], reasons=[reason] if reason else [])
        return sid

    def new_label(self, size: int, reason: str | None = None) -> Label:
        return () if size == 1 else (self.new(size, reason),)

    def find(self, sid: int) -> int:
        parent = self._parent
        root = sid
        while parent[root] != root:
            root = parent[root]
        while parent[sid] != root:
            parent[sid], sid = root, parent[sid]
        return root

    def size(self, sid: int) -> int:
        return self._roots[self.find(sid)].size

    def label_size(self, label: Label) -> int:
        n = 1
        for s in label:
            n *= self.size(s)
        return n

    def decomposition(self, sid: int) -> Decomposition | None:
        return self._roots[self.find(sid)].decomposition

    def members(self, sid: int) -> list[int]:
        return self._roots[self.find(sid)].members

    def parents(self, sid: int) -> list[int]:
        """Roots of the spaces whose decomposition created (a member of) this space."""
        out: list[int] = []
        for m in self.members(sid):
            origin = self._origin[m]
            if origin is not None and self.find(origin) not in out:
                out.append(self.find(origin))
        return out

    def ancestors(self, sid: int) -> list[tuple[int, Decomposition]]:
        """Every (root, decomposition) a space was decomposed from, transitively, nearest first."""
        out: list[tuple[int, Decomposition]] = []
        seen: set[int] = set()
        stack = self.parents(sid)
        while stack:
            root = stack.pop(0)
            if root in seen:
                continue
            seen.add(root)
            out.append((root, self._roots[root].decomposition))
            stack.extend(self.parents(root))
        return out

    def share(self, label: Label, leaf: int) -> float:
        """Fraction of a factor list's positions that index into ``leaf``."""
        return max((self._space_share(s, self.find(leaf)) for s in label), default=0.0)

    def _space_share(self, sid: int, leaf: int) -> float:
        root = self.find(sid)
        if root == leaf:
            return 1.0
        d = self._roots[root].decomposition
        if d is None:
            return 0.0
        if d.kind == "product":
            return max(self._space_share(c, leaf) for c in d.children)
        total = self._roots[root].size
        return sum(self.size(c) / total * self._space_share(c, leaf) for c in d.children)

    def fraction(self, label: Label, kept: dict[int, float]) -> float:
        """Kept fraction of a factor list given kept fractions of (some) leaves."""
        f = 1.0
        for s in label:
            f *= self._space_fraction(s, kept)
        return f

    def _space_fraction(self, sid: int, kept: dict[int, float]) -> float:
        root = self.find(sid)
        info = self._roots[root]
        d = info.decomposition
        if d is None:
            return kept.get(root, 1.0)
        if d.kind == "product":
            return self.fraction(tuple(d.children), kept)
        return sum(self.size(c) * self._space_fraction(c, kept) for c in d.children) / info.size

    # ---------------------------------------------------------------- blocking
    def block(self, sid: int, reason: str) -> None:
        reasons = self._roots[self.find(sid)].reasons
        if reason not in reasons and len(reasons) < 8:
            reasons.append(reason)

    def block_label(self, label: Iterable[int], reason: str) -> None:
        for s in label:
            self.block(s, reason)

    def reasons(self, sid: int) -> list[str]:
        """Blocking reasons of a space, including those of every space it was decomposed from."""
        out: list[str] = []
        seen: set[int] = set()
        stack = [self.find(sid)]
        while stack:
            root = stack.pop()
            if root in seen:
                continue
            seen.add(root)
            for r in self._roots[root].reasons:
                if r not in out:
                    out.append(r)
            for m in self._roots[root].members:
                origin = self._origin[m]
                if origin is not None:
                    stack.append(self.find(origin))
        return out

    # ---------------------------------------------------------------- union
    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        A, B = self._roots[ra], self._roots[rb]
        if A.size != B.size:
            raise ValueError(f"internal error: cannot unify spaces of sizes {A.size} and {B.size}")
        if len(A.members) < len(B.members):
            ra, rb, A, B = rb, ra, B, A
        self._parent[rb] = ra
        del self._roots[rb]
        A.members.extend(B.members)
        for r in B.reasons:
            if r not in A.reasons:
                A.reasons.append(r)
        da, db = A.decomposition, B.decomposition
        if da is None:
            A.decomposition = db
        elif db is not None:
            same = da.kind == db.kind and [self.size(c) for c in da.children] == [self.size(c) for c in db.children]
            if same:
                for ca, cb in zip(da.children, db.children):
                    self.union(ca, cb)
            elif {da.kind, db.kind} == {"product", "sum"}:
                product, sums = (da, db) if da.kind == "product" else (db, da)
                A.decomposition = product
                if not self._absorb_sum(product, sums):
                    self.block(ra, f"channels are split in two incompatible ways ({da.site}; {db.site})")
            else:
                self.block(ra, f"channels are split in two incompatible ways ({da.site}; {db.site})")
        return self.find(ra)

    def _absorb_sum(self, product: Decomposition, sums: Decomposition) -> bool:
        """Reconcile k equal segments (a concat of q, k and v biases) with a product [k, rest] of the same
        space (their reshape into 3 × heads × head_dim): every segment is the product's ``rest``."""
        sizes = {self.size(c) for c in sums.children}
        if len(sizes) != 1:
            return False
        grouped = self._group_product(product.children, [len(sums.children), sizes.pop()])
        if grouped is None:
            return False
        rest = self.space_for(tuple(grouped[1]), product.site)
        for c in sums.children:
            self.union(c, rest)
        return True

    def unify(self, a: Label, b: Label) -> Label:
        """Make two factor lists of equal total size index the same thing; returns ``a``."""
        if a == b:
            return a
        atoms_a, atoms_b = self.atoms(a), self.atoms(b)
        ok = self._align(atoms_a, atoms_b, Site("unify"))
        if not ok:
            reason = "channels are reshaped in incompatible ways"
            self.block_label(a, reason)
            self.block_label(b, reason)
        return a

    def _align(self, xs: list[int], ys: list[int], site: Site) -> bool:
        xs, ys = list(xs), list(ys)
        while xs and ys:
            x, y = xs.pop(0), ys.pop(0)
            sx, sy = self.size(x), self.size(y)
            if sx == sy:
                self.union(x, y)
            elif sx > sy and sx % sy == 0:
                parts = self.decompose(x, "product", [sy, sx // sy], site)
                if parts is None:
                    return False
                self.union(parts[0], y)
                xs.insert(0, parts[1])
            elif sy > sx and sy % sx == 0:
                parts = self.decompose(y, "product", [sx, sy // sx], site)
                if parts is None:
                    return False
                self.union(x, parts[0])
                ys.insert(0, parts[1])
            else:
                return False
        return not xs and not ys

    # ---------------------------------------------------------------- decomposition
    def decompose(self, sid: int, kind: str, sizes: Sequence[int], site: Site) -> list[int] | None:
        """Decompose ``sid`` (product of or sum of ``sizes``); reuse a matching decomposition.

        Returns the child spaces, or None (and blocks the space) when it already has a different one.
        """
        root = self.find(sid)
        info = self._roots[root]
        existing = info.decomposition
        if existing is not None:
            child_sizes = [self.size(c) for c in existing.children]
            if existing.kind == kind and child_sizes == list(sizes):
                return list(existing.children)
            if existing.kind == "product" and kind == "product":
                # A coarser split of an existing finer product: group existing children.
                grouped = self._group_product(existing.children, sizes)
                if grouped is not None:
                    return [self.space_for(g, site) for g in grouped]
            if existing.kind == "sum" and kind == "product":
                product = Decomposition(kind, self._children(root, sizes), site)
                if self._absorb_sum(product, existing):
                    self._roots[self.find(root)].decomposition = product
                    return list(product.children)
            self.block(root, f"channels are split in two incompatible ways ({existing.site}; {site})")
            return None
        children = self._children(root, sizes)
        info.decomposition = Decomposition(kind, children, site)
        return list(children)

    def _children(self, root: int, sizes: Sequence[int]) -> list[int]:
        children = []
        for n in sizes:
            c = self.new(n)
            self._origin[c] = root
            children.append(c)
        return children

    def _group_product(self, children: list[int], sizes: Sequence[int]) -> list[list[int]] | None:
        groups: list[list[int]] = []
        it = iter(children)
        for n in sizes:
            group, prod = [], 1
            while prod < n:
                c = next(it, None)
                if c is None:
                    return None
                group.append(c)
                prod *= self.size(c)
            if prod != n:
                return None
            groups.append(group)
        return groups if next(it, None) is None else None

    def space_for(self, label: Label, site: Site = Site("unify")) -> int:
        """A single space standing for a factor list (a new product space if it has several factors)."""
        if len(label) == 1:
            return label[0]
        size = self.label_size(label)
        sid = self.new(size) if label else self.new(1)
        if len(label) > 1:
            children = self.decompose(sid, "product", [self.size(s) for s in label], site)
            assert children is not None
            for c, s in zip(children, label):
                self.union(c, s)
        return sid

    def atoms(self, label: Label) -> list[int]:
        """Expand a factor list through product decompositions into its finest factors."""
        out: list[int] = []
        for s in label:
            d = self.decomposition(s)
            if d is not None and d.kind == "product":
                out.extend(self.atoms(tuple(d.children)))
            else:
                out.append(self.find(s))
        return out

    def split(self, label: Label, sizes: Sequence[int], site: Site) -> list[Label] | None:
        """Split a factor list into consecutive factor lists of the given sizes (a reshape)."""
        atoms = self.atoms(label)
        out: list[Label] = []
        for n in sizes:
            if n == 1:
                out.append(())
                continue
            group: list[int] = []
            prod = 1
            while prod < n:
                if not atoms:
                    return None
                a = atoms.pop(0)
                sa = self.size(a)
                if n % (prod * sa) == 0:
                    group.append(a)
                    prod *= sa
                elif sa % (n // prod) == 0:
                    parts = self.decompose(a, "product", [n // prod, sa // (n // prod)], site)
                    if parts is None:
                        return None
                    group.append(parts[0])
                    atoms.insert(0, parts[1])
                    prod = n
                else:
                    return None
            out.append(tuple(group))
        return out if not atoms else None

    # ---------------------------------------------------------------- leaves and masks
    def leaves(self, label: Label) -> list[int]:
        """Every undecomposed root under a factor list (through products and sums)."""
        out: list[int] = []
        for s in label:
            d = self.decomposition(s)
            if d is None:
                out.append(self.find(s))
            else:
                out.extend(self.leaves(tuple(d.children)))
        return out

    def label_mask(self, label: Label, leaf_masks: dict[int, torch.Tensor]) -> torch.Tensor:
        """The keep-mask of a factor list given masks of (some) leaves; absent leaves are kept."""
        mask = torch.ones((), dtype=torch.bool)
        for s in label:
            mask = (mask.reshape(-1, 1) & self._space_mask(s, leaf_masks).reshape(1, -1)).reshape(-1)
        return mask.reshape(-1) if label else torch.ones(1, dtype=torch.bool)

    def _space_mask(self, sid: int, leaf_masks: dict[int, torch.Tensor]) -> torch.Tensor:
        root = self.find(sid)
        d = self._roots[root].decomposition
        if d is None:
            m = leaf_masks.get(root)
            return m if m is not None else torch.ones(self._roots[root].size, dtype=torch.bool)
        if d.kind == "sum":
            return torch.cat([self._space_mask(c, leaf_masks) for c in d.children])
        return self.label_mask(tuple(d.children), leaf_masks)

    def label_coords(self, label: Label, leaf: int) -> torch.Tensor:
        """For each position of a factor list, its index in ``leaf`` (-1 where the leaf is absent)."""
        leaf = self.find(leaf)
        coords, present = self._product_coords(label, leaf)
        return torch.where(present, coords, torch.full_like(coords, -1))

    def _space_coords(self, sid: int, leaf: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(index contribution, leaf-present flag) per position; contributions are additive."""
        root = self.find(sid)
        info = self._roots[root]
        d = info.decomposition
        if d is None:
            if root == leaf:
                return torch.arange(info.size), torch.ones(info.size, dtype=torch.bool)
            return torch.zeros(info.size, dtype=torch.long), torch.zeros(info.size, dtype=torch.bool)
        if d.kind == "sum":
            parts = [self._space_coords(c, leaf) for c in d.children]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return self._product_coords(tuple(d.children), leaf)

    def _product_coords(self, label: Label, leaf: int) -> tuple[torch.Tensor, torch.Tensor]:
        coords = torch.zeros(1, dtype=torch.long)
        present = torch.zeros(1, dtype=torch.bool)
        for s in label:
            c, p = self._space_coords(s, leaf)
            coords = (coords.reshape(-1, 1) + c.reshape(1, -1)).reshape(-1)
            present = (present.reshape(-1, 1) | p.reshape(1, -1)).reshape(-1)
        return coords, present
