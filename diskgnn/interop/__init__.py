"""Adapters to other GNN libraries (optional; each imports its library only when called).

:mod:`diskgnn.interop.pyg` hands presampled blocks to PyTorch Geometric as
bipartite message passing (``x=(h_src, h_dst)``, ``edge_index``, ``size``) and
:mod:`diskgnn.interop.dgl` as ``dgl.create_block`` blocks, so convolutions of
either library train on diskgnn's pipeline unchanged.

This module is the interface the rest of diskgnn uses: a model name
``pyg:<Conv>`` or ``dgl:<Conv>`` (``--model pyg:SAGEConv``) is checked by
:func:`foreign_conv` and built by :func:`build_foreign_stack`, a stack of that
convolution as deep as the samples' fanouts. Neither imports PyG or DGL before
a foreign model is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from diskgnn.errors import ConfigError

LIBRARIES = {"pyg": "PyTorch Geometric (torch_geometric.nn)", "dgl": "DGL (dgl.nn)"}
"""Prefixes of foreign model names and the library each one names."""


@dataclass(frozen=True, slots=True)
class ForeignConv:
    """A convolution class of another library that a diskgnn stack can be built from.

    Made by :func:`foreign_conv` only after the class was constructed with small
    widths and run on a bipartite probe block (3 destinations, 4 sources, one
    destination without in-edges), returning one row per destination.
    """
    library: str
    """``pyg`` or ``dgl``."""
    name: str
    """Class name in ``torch_geometric.nn`` or ``dgl.nn.pytorch``."""
    multi_head: bool
    """Takes a number of attention heads (``--heads``): the hidden width is per head, ELU between layers
    (ReLU otherwise)."""
    concat_heads: bool = False
    """A hidden layer's output is ``heads x hidden`` wide (heads concatenated; the output layer averages them)."""
    takes_size: bool = False
    """PyG only: ``forward`` accepts ``size=(num_src, num_dst)``."""
    pair_widths: bool = False
    """DGL only: the constructor takes the input width as a (source, destination) pair to accept a pair of
    features (DotGatConv)."""

    @property
    def model_name(self) -> str:
        return f"{self.library}:{self.name}"


def split_model_name(name: str) -> tuple[str, str] | None:
    """``("pyg", "SAGEConv")`` for ``pyg:SAGEConv``; None for a name without a library prefix."""
    if not isinstance(name, str) or ":" not in name:
        return None
    library, _, conv = name.partition(":")
    if library not in LIBRARIES:
        raise ConfigError(f"--model {name!r}: unknown library prefix {library!r}; use pyg:<Conv> for a "
                          f"convolution of torch_geometric.nn, dgl:<Conv> for one of dgl.nn, or one of diskgnn's "
                          f"own models (sage, gat, gcn)")
    if not conv.isidentifier():
        raise ConfigError(f"--model {name!r}: after '{library}:' comes the class name of a convolution of "
                          f"{LIBRARIES[library]}, e.g. {library}:SAGEConv")
    return library, conv


def foreign_conv(library: str, name: str) -> ForeignConv:
    """Check that ``library``'s convolution ``name`` can be stacked on diskgnn's blocks (ConfigError if not)."""
    if library == "pyg":
        from diskgnn.interop import pyg
        return pyg.conv_spec(name)
    if library == "dgl":
        from diskgnn.interop import dgl
        return dgl.conv_spec(name)
    raise ConfigError(f"unknown library {library!r}; choose one of {', '.join(LIBRARIES)}")


def build_foreign_stack(conv: ForeignConv, *, in_dim: int, num_classes: int, num_layers: int, hidden: int,
                        heads: int, dropout: float) -> nn.Module:
    """A ``num_layers``-deep stack of ``conv`` taking ``(blocks, x)`` like :class:`diskgnn.models.GNN`.

    Widths: ``in_dim`` > ``hidden`` (per head for multi-head convolutions) > ... > ``num_classes``.
    """
    if conv.library == "pyg":
        from diskgnn.interop import pyg
        return pyg.build_stack(conv, in_dim=in_dim, num_classes=num_classes, num_layers=num_layers,
                               hidden=hidden, heads=heads, dropout=dropout)
    from diskgnn.interop import dgl
    return dgl.build_stack(conv, in_dim=in_dim, num_classes=num_classes, num_layers=num_layers, hidden=hidden,
                           heads=heads, dropout=dropout)


def check_block_count(num_layers: int, blocks) -> None:
    """The error of a stack given a batch of another depth."""
    if len(blocks) != num_layers:
        raise ConfigError(f"the model has {num_layers} layers but the batch has {len(blocks)} blocks; build the "
                          f"model with num_layers equal to the number of sampling fanouts")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception raised by another library, its first line, cut to ``limit`` chars."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {(text[0] if text else '')[:limit]}"


def suggest(name: str, candidates, library: str) -> str:
    """`` Did you mean X?`` for a near miss among ``candidates`` (case-insensitive), else an empty string."""
    import difflib
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.7)
    return f" Did you mean {library}:{by_lower[close[0]]}?" if close else ""
