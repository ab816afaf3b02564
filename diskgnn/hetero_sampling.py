"""Neighbour sampling on a heterogeneous dataset: per relation, per layer, seeded and thread-count independent.

Nodes get *global* ids (each type's local ids shifted by the type's offset, types
in manifest order), so a minibatch looks like a homogeneous one plus the
relation of every edge:

* ``input_nodes`` (global ids): the seeds first, then each layer's new nodes in
  first-appearance order, so every layer's nodes are a prefix (as for
  homogeneous batches);
* block ``i`` is a CSR over its ``layer_sizes[i + 1]`` destination nodes, each
  destination's in-edges grouped by relation (relations in manifest order);
* ``block_etypes`` gives the relation index of every edge.

A destination of type ``D`` is sampled in every relation into ``D`` with that
relation's fanout: a uniform subset without replacement of its in-neighbours in
the relation (all of them when there are no more than the fanout, or for -1). The
draws use the homogeneous sampler's rule (:func:`diskgnn.kernels.sampling.sample_layer`)
keyed by ``(batch key, layer, relation index, local node id)``, so the output does
not depend on the thread count.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diskgnn.errors import ConfigError, InputFormatError
from diskgnn.hetero import HeteroDataset


@dataclass
class HeteroMiniBatch:
    input_nodes: np.ndarray  # int64 global ids
    layer_sizes: np.ndarray  # int64 [L + 1]
    block_indptr: list  # per layer (outermost first), int64 [layer_sizes[i + 1] + 1]
    block_indices: list  # per layer, int32 local source ids
    block_etypes: list  # per layer, int16 relation index of every edge

    @property
    def num_layers(self) -> int:
        return len(self.block_indptr)

    @property
    def num_edges(self) -> int:
        return sum(int(b.shape[0]) for b in self.block_indices)


def batch_key(*parts: int) -> np.uint64:
    """A uint64 key mixed from ``parts`` (the samplers' counter-based RNG)."""
    from diskgnn.kernels.rng import mix_key
    key = np.uint64(parts[0])
    for p in parts[1:]:
        key = np.uint64(mix_key(key, np.uint64(p)))
    return key


def parse_hetero_fanouts(text: str, relations: list[str]) -> list[dict[str, int]]:
    """Per layer (outermost first), the fanout of every relation.

    ``text`` lists layers comma-separated, like ``--fanouts`` of homogeneous
    graphs; a layer is one count for every relation (``10``) or ``|``-separated
    ``relation=count`` items with an optional ``*=count`` for the rest
    (``cites=5|writes=3|*=10``). A relation is named by its file name
    (``paper__cites__paper``) or, when unambiguous, its middle part (``cites``).
    -1 takes every neighbour."""
    mids: dict[str, list[str]] = {}
    for r in relations:
        mids.setdefault(r.split("__")[1], []).append(r)

    def resolve(name: str) -> str:
        if name in relations:
            return name
        found = mids.get(name, [])
        if len(found) == 1:
            return found[0]
        if found:
            raise ConfigError(f"--fanouts: relation {name!r} is ambiguous ({', '.join(found)}); use the full name")
        raise ConfigError(f"--fanouts: unknown relation {name!r}; the dataset has {', '.join(relations)}")

    def count(tok: str) -> int:
        try:
            k = int(tok)
        except ValueError:
            raise ConfigError(f"--fanouts: {tok!r} is not a whole number") from None
        if k == 0 or k < -1:
            raise ConfigError(f"--fanouts: fanout {k} must be positive or -1 (every neighbour)")
        return k

    layers = []
    for layer in str(text).split(","):
        layer = layer.strip()
        if not layer:
            raise ConfigError(f"--fanouts {text!r}: an empty layer")
        if "=" not in layer:
            k = count(layer)
            layers.append({r: k for r in relations})
            continue
        given, default = {}, None
        for item in layer.split("|"):
            name, _, k = item.partition("=")
            name = name.strip()
            if name == "*":
                default = count(k)
            else:
                given[resolve(name)] = count(k)
        missing = [r for r in relations if r not in given]
        if missing and default is None:
            raise ConfigError(f"--fanouts layer {layer!r} gives no fanout for {', '.join(missing)}; add them or "
                              f"'*=count' for the rest")
        layers.append({r: given.get(r, default) for r in relations})
    return layers


class HeteroSampler:
    """Samples minibatches of target-type seeds on a heterogeneous dataset (the CSRs memory-mapped)."""

    def __init__(self, dataset: HeteroDataset, fanouts: str | list[dict[str, int]]):
        self.ds = dataset
        self.relations = list(dataset.relations)
        self.fanouts = parse_hetero_fanouts(fanouts, self.relations) if isinstance(fanouts, str) else fanouts
        if not self.fanouts:
            raise ConfigError("--fanouts: at least one layer")
        offs = dataset.type_offsets
        self.type_offsets = offs
        self._csr = []
        for name in self.relations:
            r = dataset.relations[name]
            self._csr.append((np.asarray(dataset.indptr(name)), dataset.indices(name),
                              offs[r.src], offs[r.dst], dataset.node_types[r.dst].num_nodes))
        self.node_map = np.full(dataset.num_nodes, -1, dtype=np.int32)
        self.target_offset = offs[dataset.target]
        self.num_targets = dataset.node_types[dataset.target].num_nodes

    def sample(self, seeds: np.ndarray, key) -> HeteroMiniBatch:
        """One minibatch around ``seeds`` (distinct local ids of the target type)."""
        from diskgnn.kernels.rng import mix_key
        from diskgnn.kernels.sampling import relabel, reset_map, room_for, sample_layer
        seeds = np.asarray(seeds, dtype=np.int64)
        if seeds.size and (int(seeds.min()) < 0 or int(seeds.max()) >= self.num_targets):
            raise InputFormatError(f"seed ids must lie in 0..{self.num_targets - 1} of the target type "
                                   f"{self.ds.target!r}")
        if np.unique(seeds).size != seeds.size:
            raise InputFormatError("the seeds of a minibatch must be distinct")
        key = np.uint64(key)
        num_layers = len(self.fanouts)
        nodes = np.empty(max(2 * seeds.size, 16), dtype=np.int64)
        nodes[:seeds.size] = seeds + self.target_offset
        node_map = self.node_map
        node_map[nodes[:seeds.size]] = np.arange(seeds.size, dtype=np.int32)
        num_nodes = seeds.size
        sizes = np.empty(num_layers + 1, dtype=np.int64)
        sizes[num_layers] = seeds.size
        ptrs, idxs, types = [None] * num_layers, [None] * num_layers, [None] * num_layers
        try:
            for layer in range(num_layers - 1, -1, -1):
                num_dst = num_nodes
                dst = nodes[:num_dst]
                layer_key = np.uint64(mix_key(key, np.uint64(layer)))
                e_dst, e_src, e_type = [], [], []
                for ri, (indptr, indices, src_off, dst_off, n_dst) in enumerate(self._csr):
                    k = self.fanouts[layer][self.relations[ri]]
                    pos = np.flatnonzero((dst >= dst_off) & (dst < dst_off + n_dst))
                    if pos.size == 0:
                        continue
                    local = dst[pos] - dst_off
                    deg = indptr[local + 1] - indptr[local]
                    cnt = deg if k < 0 else np.minimum(deg, k)
                    offsets = np.zeros(pos.size + 1, dtype=np.int64)
                    np.cumsum(cnt, out=offsets[1:])
                    nbrs = np.empty(int(offsets[-1]), dtype=np.int64)
                    if nbrs.size:
                        sample_layer(indptr, indices, local, k, np.uint64(mix_key(layer_key, np.uint64(ri))), offsets, nbrs)
                    e_dst.append(np.repeat(pos, cnt))
                    e_src.append(nbrs + src_off)
                    e_type.append(np.full(nbrs.size, ri, dtype=np.int16))
                if e_dst:
                    d, s, t = np.concatenate(e_dst), np.concatenate(e_src), np.concatenate(e_type)
                    order = np.lexsort((t, d))  # by destination, then relation; each sample keeps its CSR order
                    d, s, t = d[order], s[order], t[order]
                else:
                    d, s, t = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16))
                nodes = room_for(nodes, num_nodes, s.size)
                local_src = np.empty(s.size, dtype=np.int32)
                num_nodes = relabel(s, node_map, nodes, num_nodes, local_src)
                indptr_b = np.zeros(num_dst + 1, dtype=np.int64)
                np.cumsum(np.bincount(d, minlength=num_dst), out=indptr_b[1:])
                sizes[layer] = num_nodes
                ptrs[layer], idxs[layer], types[layer] = indptr_b, local_src, t
        finally:
            reset_map(node_map, nodes, num_nodes)
        return HeteroMiniBatch(nodes[:num_nodes].copy(), sizes, ptrs, idxs, types)

    def inputs_by_type(self, mb: HeteroMiniBatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """For every node type, ``(positions in input_nodes, local ids)`` of the batch's input nodes of that type."""
        counts = {t: n.num_nodes for t, n in self.ds.node_types.items()}
        return inputs_by_type(mb.input_nodes, self.type_offsets, counts)


def inputs_by_type(input_nodes: np.ndarray, type_offsets: dict[str, int], counts: dict[str, int]) \
        -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For every type of ``counts``, ``(positions in input_nodes, local ids)`` of the global ids of that type."""
    out = {}
    for name, n in counts.items():
        off = type_offsets[name]
        pos = np.flatnonzero((input_nodes >= off) & (input_nodes < off + n))
        out[name] = (pos, input_nodes[pos] - off)
    return out
