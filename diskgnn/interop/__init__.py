"""Adapters to other GNN libraries (optional; each imports its library only when called).

:mod:`diskgnn.interop.dgl` turns presampled batches into ``dgl.create_block``
blocks so that any ``dgl.nn`` model trains on diskgnn's pipeline unchanged.
"""
