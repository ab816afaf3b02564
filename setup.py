"""Packaging for diskgnn: the library, its numba kernels and its command line."""
from setuptools import setup

setup(
    name="diskgnn",
    version="0.1.0",
    description="Out-of-core GNN training: offline sampling, packed features, multi-level cache, pipelined trainer",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["diskgnn", "diskgnn.interop", "diskgnn.kernels", "diskgnn.tools", "diskgnn.bench"],
    package_dir={"diskgnn": "diskgnn", "diskgnn.kernels": "kernels", "diskgnn.tools": "tools",
                 "diskgnn.bench": "bench"},
    install_requires=["numpy", "numba>=0.59", "torch>=2.1", "psutil", "tqdm"],
    extras_require={
        "dgl": ["torch==2.2.1", "dgl==2.1.0", "numpy<2", "torchdata==0.7.1", "pandas", "pydantic", "pyyaml"],
        # pure Python, works with current torch: --model pyg:<Conv> and diskgnn.interop.pyg
        "pyg": ["torch-geometric>=2.5"],
        "dev": ["pytest", "matplotlib"],
    },
    entry_points={"console_scripts": ["diskgnn=diskgnn.tools.cli:main"]},
)
