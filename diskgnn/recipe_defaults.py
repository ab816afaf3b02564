"""The training recipe's choices and defaults (``--init``, ``--lr``, ``--lr-schedule`` ...), without torch.

:mod:`diskgnn.models` and :mod:`diskgnn.train` re-export them; they live here so that
the command line can list them in its help without importing torch (every command
builds the whole parser, and torch's libraries alone map ~150 MB into a process,
which matters to ``verify`` and ``sample`` under a memory cap).
"""

INITS = ("torch", "xavier", "xavier-relu")
"""Weight initialisations of diskgnn's own models (``--init``), measured in docs/RECIPE.md:

* ``torch``: torch's default for ``nn.Linear`` (Kaiming-uniform with a=sqrt(5), i.e. U(+-1/sqrt(fan_in)),
  biases U(+-1/sqrt(fan_in)) where a Linear of PyG's layer holds them), what PyTorch Geometric uses;
  GAT's attention vectors U(+-1/sqrt(D)) (a Linear from D to 1 per head);
* ``xavier``: Xavier/Glorot with gain 1, zero biases;
* ``xavier-relu``: Xavier with the ReLU gain sqrt(2), zero biases: DGL's choice and diskgnn's before the
  measured recipe.

Xavier is uniform for sage and gcn, normal for gat (as DGL's GATConv)."""
DEFAULT_INIT = "torch"
"""The measured default (docs/RECIPE.md): learns fastest per epoch and converges as high or higher."""

LR_SCHEDULES = ("constant", "cosine")
"""``--lr-schedule``: constant, or cosine decay to 0 at the last step (after the warm-up)."""
DEFAULT_LR = 1e-3
DEFAULT_DROPOUT = 0.0
DEFAULT_LR_SCHEDULE = "constant"
DEFAULT_WARMUP_EPOCHS = 0.0
