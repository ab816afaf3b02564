"""A real graph that a PyPI wheel ships, as a ``diskgnn prepare --format npz`` input (no download at run time).

The ``orange3-network`` wheel (the Orange data-mining network add-on) bundles
``orangecontrib/network/networks/lastfm.net``: 1,239 music artists, an edge
between two artists when one is in the other's top-5 similar artists on Last.fm
(a graph made from listeners' behaviour; 3,963 undirected edges), and
``lastfm_tags.tab``: each artist's weights for 350 Last.fm tags, which become the
node features (log1p of the weights). Get the wheel with the ordinary client and
convert it::

    pip download --no-deps orange3-network==1.10.2 -d wheels/
    python -m diskgnn.bench.realgraph --wheel wheels/orange3_network-*.whl --out lastfm.npz
    diskgnn prepare --format npz lastfm.npz --undirected --edge-split 0.85,0.05,0.10 --out data/lastfm

The wheel is only read (a zip file); nothing is installed.
"""
from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from diskgnn.errors import InputFormatError, InputNotFoundError

NET = "orangecontrib/network/networks/lastfm.net"
TAGS = "orangecontrib/network/networks/lastfm_tags.tab"


def parse_pajek(text: str, where: str) -> tuple[int, np.ndarray]:
    """Node count and int64 [2, E] edges (0-based) of a Pajek ``.net`` text (``*vertices N``, ``*edges``/``*arcs``)."""
    n, edges, section = None, [], None
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        head = parts[0].lower()
        if head.startswith("*vertices"):
            n, section = int(parts[1]), "vertices"
        elif head.startswith(("*edges", "*arcs")):
            section = "edges"
        elif head.startswith("*"):
            section = None
        elif section == "edges":
            try:
                edges.append((int(parts[0]) - 1, int(parts[1]) - 1))
            except (ValueError, IndexError):
                raise InputFormatError(f"{where}, line {number}: {line[:60]!r} is not an edge 'u v [w]'") from None
    if n is None or not edges:
        raise InputFormatError(f"{where} has no '*vertices N' line or no edges")
    return n, np.asarray(edges, dtype=np.int64).T


def parse_tab_features(text: str, rows: int, where: str) -> np.ndarray:
    """The continuous columns of an Orange ``.tab`` file (names, types, flags, then data rows) as float32."""
    lines = text.split("\n")
    types = lines[1].split("\t")
    keep = [j for j, t in enumerate(types) if t.strip() in ("continuous", "c")]
    data = [line.split("\t") for line in lines[3:] if line.strip()]
    if len(data) != rows or not keep:
        raise InputFormatError(f"{where}: {len(data)} rows and {len(keep)} numeric columns, expected {rows} rows")
    out = np.array([[float(r[j] or 0.0) for j in keep] for r in data], dtype=np.float32)
    return np.log1p(np.maximum(out, 0.0))


def lastfm_from_wheel(wheel: Path) -> dict:
    """``edge_index`` (2 x E) and ``feat`` (N x 350) of the Last.fm artist graph inside the wheel."""
    if not wheel.exists():
        raise InputNotFoundError(f"{wheel} does not exist; get it with pip download --no-deps orange3-network")
    try:
        with zipfile.ZipFile(wheel) as zf:
            net = zf.read(NET).decode("utf-8", errors="replace")
            tags = zf.read(TAGS).decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise InputFormatError(f"{wheel} is not an orange3-network wheel holding {NET} ({exc})") from None
    n, edge_index = parse_pajek(net, f"{wheel}:{NET}")
    feat = parse_tab_features(tags, n, f"{wheel}:{TAGS}")
    return {"edge_index": edge_index, "feat": feat}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diskgnn.bench.realgraph", description=__doc__.split("\n\n")[0])
    p.add_argument("--wheel", required=True, help="an orange3-network wheel (pip download --no-deps orange3-network)")
    p.add_argument("--out", required=True, help="the .npz to write (edge_index, feat)")
    args = p.parse_args(argv)
    arrays = lastfm_from_wheel(Path(args.wheel))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    Path(args.out).write_bytes(buf.getvalue())
    print(f"wrote {args.out}: {arrays['feat'].shape[0]} nodes, {arrays['edge_index'].shape[1]} edges, "
          f"{arrays['feat'].shape[1]} features")
    return 0


if __name__ == "__main__":
    sys.exit(main())
